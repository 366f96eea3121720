"""recaudit: audit recommender policies for the preference shifts they induce."""

__version__ = "0.1.0"
