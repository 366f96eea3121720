"""Test doubles whose outputs make expected results computable by hand."""

from __future__ import annotations

import torch

from simulator.policy import PolicyContext
from simulator.types import Feedback, Observation


class ConstantPolicy:
    """Shows every user the same fixed slate."""

    oracle = False

    def __init__(self, slate: list[int]) -> None:
        self.name = "constant"
        self.slate = slate
        self.feedback: list[Feedback] = []
        self.observations: list[Observation] = []

    def reset(self, ctx: PolicyContext) -> None:
        self.ctx = ctx

    def act(self, obs: Observation) -> torch.Tensor:
        self.observations.append(obs)
        return torch.tensor(self.slate, device=self.ctx.device)[None, :].expand(obs.num_users, -1)

    def update(self, feedback: Feedback) -> None:
        self.feedback.append(feedback)


class BadShapePolicy(ConstantPolicy):
    def act(self, obs: Observation) -> torch.Tensor:
        return torch.zeros(obs.num_users, len(self.slate) + 1, dtype=torch.long)


class OutOfRangePolicy(ConstantPolicy):
    def act(self, obs: Observation) -> torch.Tensor:
        return torch.full((obs.num_users, len(self.slate)), 10**6, dtype=torch.long)
