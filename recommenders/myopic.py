"""A deployable myopic recommender: greedy on an online estimate of each user's taste."""

from __future__ import annotations

import torch

from simulator.policy import PolicyContext, top_k_items
from simulator.types import Feedback, Observation

from .features import EWMA_RATE


class MyopicEstimate:
    """Maximizes next-step expected clicks on an estimate of the user's state.

    The estimate is the exponentially weighted average of the features of the items the
    user clicked (rate 0.3), the platform's view of recent interest; the slate is the k
    items of highest ``<estimate, x> + appeal``. Before a user's first click the estimate
    is 0, so the slate is the k most appealing items (ties broken deterministically). It never reads true
    preferences.
    """

    oracle = False

    def __init__(self) -> None:
        self.name = "myopic"

    def reset(self, ctx: PolicyContext) -> None:
        self.ctx = ctx
        self.estimate = torch.zeros(ctx.num_users, ctx.catalog.dim, device=ctx.device)

    def act(self, obs: Observation) -> torch.Tensor:
        c = self.ctx.catalog
        return top_k_items(self.estimate, c.features, self.ctx.slate_size, bias=c.appeal)

    def update(self, feedback: Feedback) -> None:
        clicked = (feedback.item >= 0)[:, None]
        x = self.ctx.catalog.features[feedback.item.clamp_min(0)]
        self.estimate = torch.where(
            clicked, (1 - EWMA_RATE) * self.estimate + EWMA_RATE * x, self.estimate
        )
