"""Tensor bundles passed between the simulator's parts. Batch dimension first."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Catalog:
    """The items a recommender can show.

    features: [K, d] item vectors x_i.
    appeal:   [K] added to click utility (clickbait); zero by default.
    quality:  [K] added to welfare when consumed; zero by default.
    topic:    [K] integer topic of each item (for diversity metrics).
    item_ids: the K stable string ids of the items at the boundary (what uploaded models,
              remote endpoints, exports and reports speak); inside the engine an item is
              its index. Default: ``str(index)``.
    """

    features: torch.Tensor
    appeal: torch.Tensor
    quality: torch.Tensor
    topic: torch.Tensor
    item_ids: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "item_ids", check_ids(self.item_ids, self.size, "item"))

    @property
    def size(self) -> int:
        return int(self.features.shape[0])

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    def to(self, device: torch.device | str) -> Catalog:
        return Catalog(
            features=self.features.to(device),
            appeal=self.appeal.to(device),
            quality=self.quality.to(device),
            topic=self.topic.to(device),
            item_ids=self.item_ids,
        )


@functools.lru_cache(maxsize=8)
def default_ids(n: int) -> tuple[str, ...]:
    """The ids of entities that have none of their own: ``"0" .. str(n - 1)``."""
    return tuple(str(i) for i in range(n))


def check_ids(ids: tuple[str, ...] | list[str], n: int, what: str) -> tuple[str, ...]:
    """``ids`` as a tuple of n distinct non-empty strings; empty means :func:`default_ids`.
    ValueError names the first offending position."""
    if not len(ids):
        return default_ids(n)
    ids = tuple(ids)
    if len(ids) != n:
        raise ValueError(f"{len(ids)} {what} ids for {n} {what}s")
    seen: dict[str, int] = {}
    for i, x in enumerate(ids):
        if not isinstance(x, str) or not x or any(c in x for c in "\t\n\r"):
            raise ValueError(
                f"{what} id at position {i} ({x!r}) is not a non-empty one-line string"
            )
        if x in seen:
            raise ValueError(f"{what} id {x!r} appears at positions {seen[x]} and {i}")
        seen[x] = i
    return ids


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
