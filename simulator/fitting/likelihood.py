"""The likelihood of a log under a dynamics family: multinomial logit over what was shown
plus the outside option (the scenario's choice model), each user's state carried forward
through their events by the family's update.

``P(slot i) = w_i exp(s_i / T) / (exp(c0 / T) + sum_j w_j exp(s_j / T))`` with
``s_i = <u_t, x_i> + appeal_i``; a logged no-click is the outside option. Without an
outside option (proxy slates: every event is a click) the same form without ``c0``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import SpecError
from ..specs import ChoiceSpec, MNLChoice
from .families import Family
from .log import EventLog


@dataclass(frozen=True)
class ChoiceForm:
    """The choice model's constants: temperature, no-click utility (None: no outside
    option), position weights ``bias ** slot``."""

    temperature: float
    no_click_utility: float | None
    position_bias: float = 1.0

    @classmethod
    def of(cls, spec: ChoiceSpec, log: EventLog) -> ChoiceForm:
        if not isinstance(spec, MNLChoice):
            raise SpecError(
                f"fitting needs the scenario's choice model to be 'mnl', not {spec.kind!r}"
            )
        if (
            log.outside_option
            and spec.no_click_utility is None
            and bool((log.chosen[log.mask] < 0).any())
        ):
            raise SpecError(
                "the log has events without a click but the choice model has no outside option"
            )
        c0 = spec.no_click_utility if log.outside_option else None
        # proxy slates have no meaningful order: no position weights
        bias = spec.position_bias if log.exposures == "logged" else 1.0
        return cls(spec.temperature, c0, bias)


@dataclass(frozen=True)
class Items:
    features: torch.Tensor  # [K, d]
    appeal: torch.Tensor  # [K]


def states(
    family: Family,
    theta: dict[str, torch.Tensor],
    u0: torch.Tensor,
    log: EventLog,
    items: Items,
    smooth: float = 0.0,
) -> torch.Tensor:
    """[U, T, d] each user's state before each event: ``u0``, then the family's update
    after every consumed item (padding and no-clicks leave it unchanged)."""
    steps = log.slates.shape[1]
    if not family.params or steps == 0:
        return u0[:, None, :].expand(-1, steps, -1)
    consumed = log.consumed()  # [U, T], -1 where nothing was consumed
    clicked = (consumed >= 0).to(u0.dtype)
    xc = items.features[consumed.clamp_min(0)]  # [U, T, d]
    u = u0
    out = [u]
    for t in range(steps - 1):
        new = family.step(u, u0, xc[:, t], clicked[:, t], theta, smooth)
        u = torch.where(log.mask[:, t, None], new, u)
        out.append(u)
    return torch.stack(out, dim=1)


def event_loglik(
    family: Family,
    theta: dict[str, torch.Tensor],
    u0: torch.Tensor,
    log: EventLog,
    items: Items,
    choice: ChoiceForm,
    smooth: float = 0.0,
) -> torch.Tensor:
    """[U, T] log-probability of each logged event (0 where the mask is off). The states
    are carried forward in a loop over events (only the update); the choice
    probabilities of all events are then computed at once."""
    num_users, steps, k = log.slates.shape
    temp = choice.temperature
    if family.params:
        u = states(family, theta, u0, log, items, smooth)  # [U, T, d]
        x = items.features[log.slates]  # [U, T, k, d]
        scores = torch.einsum("utd,utkd->utk", u, x)
    else:  # one state per user: score the catalog once, then pick the slates
        every = u0 @ items.features.T  # [U, K]
        scores = every.gather(1, log.slates.reshape(num_users, -1)).reshape(log.slates.shape)
    logits = (scores + items.appeal[log.slates]) / temp
    if choice.position_bias != 1.0:
        pos = torch.arange(k, dtype=u0.dtype) * math.log(choice.position_bias)
        logits = logits + pos
    c0_utility = choice.no_click_utility
    outside = c0_utility is not None
    if c0_utility is not None:
        c0 = torch.full((num_users, steps, 1), c0_utility / temp, dtype=u0.dtype)
        logits = torch.cat([logits, c0], dim=2)
    slot = log.chosen
    # a no-click is the outside option (last column); without one, only padding has -1
    idx = torch.where(slot >= 0, slot, torch.full_like(slot, k if outside else 0))
    lp = logits.gather(2, idx[..., None])[..., 0] - torch.logsumexp(logits, dim=2)
    return torch.where(log.mask, lp, torch.zeros_like(lp))


def consumed_mean(log: EventLog, items: Items, upto: torch.Tensor | None = None) -> torch.Tensor:
    """[U, d] sum of the features of each user's consumed items (events where ``upto`` is
    on, all valid events by default): a warm-up estimate of the initial direction."""
    mask = log.mask if upto is None else (log.mask & upto)
    consumed = log.consumed()
    use = (consumed >= 0) & mask
    feats = items.features[consumed.clamp_min(0)] * use[..., None].to(items.features.dtype)
    return feats.sum(dim=1)
