"""The REST service (``python -m service``, ``recaudit serve``)."""

from simulator.threads import configure_process

configure_process()  # before anything imports torch (see simulator/threads.py)
