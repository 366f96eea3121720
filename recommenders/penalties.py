"""Influence penalties: rewards that remove a learner's incentive to shift its users.

Every family takes a weight; weight 0 is the unpenalized click reward. ``click`` below is
the expected click probability of the slate under the user's current preferences (the
expectation of the click, a lower-variance reward with the same optimum); ``click_initial``
and ``click_natural`` are the same slate's click probability under the user's initial
preferences and under their natural counterfactual (the same user, same random numbers,
under the natural policy). In simulation the counterfactual comes from the common-random-
numbers twin; an estimated counterfactual can take its place through the same fields.

- ``safe-shift`` (Carroll, Dragan, Russell, Hadfield-Menell, ICML 2022): add the
  engagement the slate would earn under "safe" preferences,
  ``r = click + w * (click_initial + click_natural) / 2``.
- ``distance`` (the same paper's alternative): ``r = click - w * ||u_t+1 - u_nat_t+1||``.
- ``path-specific`` (Farquhar, Carey, Everitt, AAAI 2022): evaluate the reward with the
  preferences held at their natural value, ``r = (1 - w) * click + w * click_natural``
  with w in [0, 1]; w = 1 is the full path-specific objective.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

Penalty = Literal["none", "safe-shift", "distance", "path-specific"]
PENALTIES: tuple[str, ...] = ("none", "safe-shift", "distance", "path-specific")


@dataclass(frozen=True)
class RewardParts:
    click: torch.Tensor  # [B] expected click under current preferences
    click_initial: torch.Tensor  # [B] ... under initial preferences
    click_natural: torch.Tensor  # [B] ... under the natural counterfactual's preferences
    distance: torch.Tensor  # [B] ||u_t+1 - u_nat_t+1|| after the step
    clicked: torch.Tensor  # [B] the sampled click (0/1), for reporting


def shaped_reward(penalty: str, weight: float, parts: RewardParts) -> torch.Tensor:
    if penalty == "none" or weight == 0:
        return parts.click
    if penalty == "safe-shift":
        return parts.click + weight * 0.5 * (parts.click_initial + parts.click_natural)
    if penalty == "distance":
        return parts.click - weight * parts.distance
    if penalty == "path-specific":
        return (1 - weight) * parts.click + weight * parts.click_natural
    raise ValueError(f"unknown penalty {penalty!r}")
