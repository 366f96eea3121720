"""Choice models: how a user picks one item of a slate, or none.

Every model returns probabilities of shape [B, k + 1]: the k slots in slate order, then
the no-click option. Sampling uses one uniform number per user (inverse CDF), so two arms
that draw the same uniform and face similar probabilities make coupled choices (common
random numbers).

Click utility is ``s_i = <u, x_i> + appeal_i``: appeal makes an item clickable without
making it valuable, so welfare (``<u, x_i> + quality_i``) can differ from clicks.
"""

from __future__ import annotations

from typing import Protocol

import torch

from .specs import ArgmaxChoice, ChoiceSpec, ClickProbChoice, MNLChoice, ProportionalChoice


def click_utility(u: torch.Tensor, items: torch.Tensor, appeal: torch.Tensor) -> torch.Tensor:
    """[B, k] utilities of the shown items: ``<u, x_i> + appeal_i``."""
    return torch.einsum("bd,bkd->bk", u, items) + appeal


def position_weights(k: int, bias: float, like: torch.Tensor) -> torch.Tensor:
    """Position-based examination weights ``bias ** j`` for slots j = 0..k-1 (a fixed
    geometric decay per slot, not a sequential cascade)."""
    return bias ** torch.arange(k, dtype=like.dtype, device=like.device)


class ChoiceModel(Protocol):
    def probabilities(
        self, u: torch.Tensor, items: torch.Tensor, appeal: torch.Tensor
    ) -> torch.Tensor: ...


class MNL:
    """Multinomial logit with an outside option (McFadden 1974; used by Carroll et al.).

    ``P(i) = w_i exp(s_i/T) / (exp(c0/T) + sum_j w_j exp(s_j/T))``; ``c0 = None`` removes
    the outside option. Position weights enter as ``log w_j`` added to the logits.
    """

    def __init__(self, spec: MNLChoice) -> None:
        self.spec = spec

    def probabilities(
        self, u: torch.Tensor, items: torch.Tensor, appeal: torch.Tensor
    ) -> torch.Tensor:
        s = click_utility(u, items, appeal) / self.spec.temperature
        k = s.shape[1]
        if self.spec.position_bias != 1.0:
            s = s + position_weights(k, self.spec.position_bias, s).log()
        if self.spec.no_click_utility is None:
            outside = torch.full_like(s[:, :1], float("-inf"))
        else:
            outside = torch.full_like(s[:, :1], self.spec.no_click_utility / self.spec.temperature)
        return torch.softmax(torch.cat([s, outside], dim=1), dim=1)


class Proportional:
    """RecSim's proportional choice (Ie et al. 2019): choice weight ``w_j (s_j - m)``
    clipped at 0, plus a fixed no-click mass. With one-hot topics and ``u`` in [-1, 1],
    ``m = -1`` and mass 2 give ``P(i) = (u.x_i + 1) / (sum_j (u.x_j + 1) + 2)``."""

    def __init__(self, spec: ProportionalChoice) -> None:
        self.spec = spec

    def probabilities(
        self, u: torch.Tensor, items: torch.Tensor, appeal: torch.Tensor
    ) -> torch.Tensor:
        s = (click_utility(u, items, appeal) - self.spec.min_score).clamp_min(0.0)
        k = s.shape[1]
        if self.spec.position_bias != 1.0:
            s = s * position_weights(k, self.spec.position_bias, s)
        mass = torch.full_like(s[:, :1], self.spec.no_click_mass)
        w = torch.cat([s, mass], dim=1)
        total = w.sum(dim=1, keepdim=True)
        # all-zero weights (no mass, nothing liked): the user does not click
        none = torch.zeros_like(w)
        none[:, -1] = 1.0
        return torch.where(total > 0, w / total.clamp_min(1e-30), none)


class Argmax:
    """Deterministic choice of the best click utility (T-RECS; the ``T -> 0`` logit)."""

    def __init__(self, spec: ArgmaxChoice) -> None:
        self.spec = spec

    def probabilities(
        self, u: torch.Tensor, items: torch.Tensor, appeal: torch.Tensor
    ) -> torch.Tensor:
        s = click_utility(u, items, appeal)
        best_val, best = s.max(dim=1)
        probs = torch.zeros(s.shape[0], s.shape[1] + 1, dtype=s.dtype, device=s.device)
        if self.spec.no_click_utility is None:
            probs.scatter_(1, best[:, None], 1.0)
        else:
            slot = torch.where(best_val >= self.spec.no_click_utility, best, s.shape[1])
            probs.scatter_(1, slot[:, None], 1.0)
        return probs


class ClickProb:
    """Evans and Kasirzadeh (2023): the user examines one slot uniformly and clicks its
    item with probability ``clip(<u, x_i>, 0, 1)``."""

    def __init__(self, spec: ClickProbChoice) -> None:
        self.spec = spec

    def probabilities(
        self, u: torch.Tensor, items: torch.Tensor, appeal: torch.Tensor
    ) -> torch.Tensor:
        p = click_utility(u, items, appeal).clamp(0.0, 1.0) / items.shape[1]
        return torch.cat([p, 1.0 - p.sum(dim=1, keepdim=True)], dim=1)


def build_choice(spec: ChoiceSpec) -> ChoiceModel:
    if isinstance(spec, MNLChoice):
        return MNL(spec)
    if isinstance(spec, ProportionalChoice):
        return Proportional(spec)
    if isinstance(spec, ArgmaxChoice):
        return Argmax(spec)
    return ClickProb(spec)


def sample_choice(probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sample: [B] slot in 0..k-1, or -1 for the no-click option (last column).

    A float32 CDF can end a hair below 1; a uniform beyond its end takes the last option
    with positive probability, so a zero-probability option is never chosen.
    """
    k = probs.shape[1] - 1
    cdf = probs.cumsum(dim=1)
    idx = (cdf <= uniform[:, None]).sum(dim=1)
    positions = torch.arange(k + 1, device=probs.device)
    last_positive = torch.where(probs > 0, positions, torch.zeros_like(positions)).amax(dim=1)
    idx = torch.minimum(idx, last_positive)
    return torch.where(idx == k, torch.full_like(idx, -1), idx)
