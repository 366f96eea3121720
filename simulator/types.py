"""Tensor bundles passed between the simulator's parts. Batch dimension first."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Catalog:
    """The items a recommender can show.

    features: [K, d] item vectors x_i.
    appeal:   [K] added to click utility (clickbait); zero by default.
    quality:  [K] added to welfare when consumed; zero by default.
    topic:    [K] integer topic of each item (for diversity metrics).
    """

    features: torch.Tensor
    appeal: torch.Tensor
    quality: torch.Tensor
    topic: torch.Tensor

    @property
    def size(self) -> int:
        return int(self.features.shape[0])

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    def to(self, device: torch.device | str) -> Catalog:
        return Catalog(
            *(t.to(device) for t in (self.features, self.appeal, self.quality, self.topic))
        )


@dataclass(frozen=True)
class StepNoise:
    """The random numbers of one step, drawn once and shared by every arm (common random
    numbers). Shapes depend on the scenario only, never on the policy.

    choice:  [B] uniform in [0, 1), inverse-CDF sampling of the user's choice.
    dynamics: [B] uniform in [0, 1) or None, for stochastic preference updates.
    drift:   [B, d] standard normal or None, for the natural random walk.
    """

    choice: torch.Tensor
    dynamics: torch.Tensor | None
    drift: torch.Tensor | None


@dataclass(frozen=True)
class Observation:
    """What a policy sees before acting at step ``t``.

    A deployable policy gets the catalog's features and the feedback of past steps (it
    keeps its own history through :meth:`Policy.update`). ``true_preferences`` is set only
    for policies whose ``oracle`` attribute is True: oracle references, never deployable.
    """

    t: int
    num_users: int
    true_preferences: torch.Tensor | None = None


@dataclass(frozen=True)
class Feedback:
    """What the platform observes after a step: the slates and the users' choices.

    slate:  [B, k] item indices shown.
    slot:   [B] chosen slot in 0..k-1, or -1 for no click.
    item:   [B] chosen item index, or -1 for no click.
    """

    t: int
    slate: torch.Tensor
    slot: torch.Tensor
    item: torch.Tensor
