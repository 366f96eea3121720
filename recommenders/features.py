"""What a platform can know about each user: features built from the feedback it logged.

The same featurizer serves the RL environment during training and the learned policy
when it is audited, so a policy sees at audit time exactly what it saw in training.
"""

from __future__ import annotations

import torch

from simulator.policy import PolicyContext
from simulator.types import Feedback

#: weight of the latest click in the recent-interest average
EWMA_RATE = 0.3


class HistoryFeatures:
    """Per-user running summaries of logged slates and clicks.

    Observation, per user (dimension ``3 d + 2 + S``):

    - ``recent``: exponentially weighted average of clicked items' features (rate 0.3);
    - ``clicked``: sum of clicked items' features / (t + 1);
    - ``shown``: sum of shown items' features / (k (t + 1));
    - click rate so far and ``t / horizon``;
    - the platform's segment one-hot (S columns; none for untyped populations).

    For one-hot catalogs ``clicked / shown`` per topic is the user's empirical click
    rate per topic.
    """

    def __init__(self, ctx: PolicyContext, horizon: int | None = None) -> None:
        b, d = ctx.num_users, ctx.catalog.dim
        dev = ctx.device
        self.features = ctx.catalog.features
        self.k = ctx.slate_size
        self.horizon = max(1, horizon or ctx.horizon or 1)
        self.recent = torch.zeros(b, d, device=dev)
        self.clicked = torch.zeros(b, d, device=dev)
        self.shown = torch.zeros(b, d, device=dev)
        self.clicks = torch.zeros(b, device=dev)
        self.t = 0
        self.segments = (
            ctx.segments.to(dev) if ctx.segments is not None else torch.zeros(b, 0, device=dev)
        )

    @staticmethod
    def dim(catalog_dim: int, n_segments: int) -> int:
        return 3 * catalog_dim + 2 + n_segments

    def observe(self) -> torch.Tensor:
        n = float(self.t + 1)
        b = self.clicks.shape[0]
        time = torch.full((b, 1), self.t / self.horizon, device=self.clicks.device)
        return torch.cat(
            [
                self.recent,
                self.clicked / n,
                self.shown / (n * self.k),
                (self.clicks / n)[:, None],
                time,
                self.segments,
            ],
            dim=1,
        )

    def update(self, feedback: Feedback) -> None:
        clicked = feedback.item >= 0
        x = self.features[feedback.item.clamp_min(0)]
        w = clicked.to(x.dtype)[:, None]
        self.recent = torch.where(
            clicked[:, None], (1 - EWMA_RATE) * self.recent + EWMA_RATE * x, self.recent
        )
        self.clicked += w * x
        self.shown += self.features[feedback.slate].sum(dim=1)
        self.clicks += clicked.to(self.clicks.dtype)
        self.t += 1
