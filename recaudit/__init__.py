"""recaudit: audit recommender policies for the preference shifts they induce."""

from simulator.threads import configure_process

configure_process()  # before anything imports torch (see simulator/threads.py)

__version__ = "0.1.0"
