"""Reinforcement-learning recommenders trained against the batched simulator."""
