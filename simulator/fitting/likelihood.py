"""The likelihood of a log under a dynamics family: multinomial logit over what was shown
plus the outside option (the scenario's choice model), each user's state carried forward
through their events by the family's update.

``P(slot i) = w_i exp(s_i / T) / (exp(c0 / T) + sum_j w_j exp(s_j / T))`` with
``s_i = <u_t, x_i> + appeal_i``; a logged no-click is the outside option. Without an
outside option (proxy slates: every event is a click) the same form without ``c0``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

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


@dataclass(frozen=True)
class Prepared:
    """What a likelihood evaluation needs from a log and a catalog that does not depend
    on the parameters, computed once per (log, catalog, choice) and kept on the log."""

    shown: torch.Tensor  # [U, T, k, d] features of the items shown
    base: torch.Tensor  # [U, T, k] appeal / temperature + position term of each slot
    consumed_x: torch.Tensor  # [U, T, d] features of the item consumed (0 if none)
    clicked: torch.Tensor  # [U, T] 1.0 where an item was consumed
    chosen_base: torch.Tensor  # [U, T] the chosen slot's base (0 for a no-click)

    def rows(self, rows: torch.Tensor) -> Prepared:
        """These users' tensors: the same values as preparing their subset of the log."""
        return Prepared(
            *(getattr(self, f.name)[rows] for f in fields(self))  # every field is [U, ...]
        )


def prepared(log: EventLog, items: Items, choice: ChoiceForm) -> Prepared:
    """The parameter-free tensors of ``log`` against ``items`` (cached on the log)."""
    key = (id(items), choice)
    hit = log.cache.get(key)
    if hit is not None and hit[0] is items:
        return hit[1]
    k = log.slates.shape[2]
    dtype = items.features.dtype
    base = items.appeal[log.slates] / choice.temperature
    if choice.position_bias != 1.0:
        base = base + torch.arange(k, dtype=dtype) * math.log(choice.position_bias)
    consumed = log.consumed()  # [U, T], -1 where nothing was consumed
    clicked = consumed >= 0
    slot = log.chosen.clamp_min(0)[..., None]
    out = Prepared(
        shown=items.features[log.slates],
        base=base,
        consumed_x=items.features[consumed.clamp_min(0)] * clicked[..., None].to(dtype),
        clicked=clicked.to(dtype),
        chosen_base=torch.where(clicked, base.gather(2, slot)[..., 0], torch.zeros(())),
    )
    log.cache[key] = (items, out)
    return out


def states(
    family: Family,
    theta: dict[str, torch.Tensor],
    u0: torch.Tensor,
    log: EventLog,
    prep: Prepared,
    smooth: float = 0.0,
) -> torch.Tensor:
    """[C, U, T, d] each user's state before each event: ``u0`` [C, U, d] (C copies of
    the users, e.g. one per importance-sampling draw), then the family's update after
    every consumed item (padding and no-clicks leave it unchanged)."""
    copies, users, d = u0.shape
    steps = log.slates.shape[1]
    if not family.params or steps == 0:
        return u0[:, :, None, :].expand(-1, -1, steps, -1)
    # the copies stacked as rows: per-row parameter values repeated for each copy
    th = {k: v.repeat(copies) if v.dim() else v for k, v in theta.items()}
    flat0 = u0.reshape(copies * users, d)

    def rows(x: torch.Tensor) -> torch.Tensor:
        if copies == 1:
            return x
        return x.expand(copies, *x.shape).reshape(copies * users, *x.shape[1:])

    u = flat0
    out = [u]
    for t in range(steps - 1):
        x, w = rows(prep.consumed_x[:, t]), rows(prep.clicked[:, t])
        new = family.step(u, flat0, x, w, th, smooth)
        u = torch.where(rows(log.mask[:, t])[:, None], new, u)
        out.append(u)
    return torch.stack(out, dim=1).reshape(copies, users, steps, d)


def event_loglik(
    family: Family,
    theta: dict[str, torch.Tensor],
    u0: torch.Tensor,
    log: EventLog,
    items: Items,
    choice: ChoiceForm,
    smooth: float = 0.0,
) -> torch.Tensor:
    """[U, T] log-probability of each logged event (0 where the mask is off); with ``u0``
    of shape [C, U, d] (C copies of the users' initial preferences), [C, U, T]. The
    states are carried forward in a loop over events (only the update); the choice
    probabilities of all events are then computed at once."""
    single = u0.dim() == 2
    if single:
        u0 = u0[None]
    copies, num_users, _ = u0.shape
    temp = choice.temperature
    prep = prepared(log, items, choice)
    if family.params:
        u = states(family, theta, u0, log, prep, smooth)  # [C, U, T, d]
        scores = torch.einsum("cutd,utkd->cutk", u, prep.shown)
        chosen_score = (u * prep.consumed_x).sum(dim=3)
    else:  # one state per user: score the catalog once, then pick the slates
        every = u0 @ items.features.T  # [C, U, K]
        picked_items = log.slates.reshape(num_users, -1).expand(copies, -1, -1)
        scores = every.gather(2, picked_items).reshape(copies, *log.slates.shape)
        chosen_score = torch.einsum("cud,utd->cut", u0, prep.consumed_x)
    logits = scores / temp + prep.base
    lse = torch.logsumexp(logits, dim=3)
    c0_utility = choice.no_click_utility
    if c0_utility is not None:  # the outside option
        lse = torch.logaddexp(lse, torch.tensor(c0_utility / temp, dtype=lse.dtype))
        picked = torch.where(
            prep.clicked > 0, chosen_score / temp + prep.chosen_base, c0_utility / temp
        )
    else:  # every valid event is a click
        picked = chosen_score / temp + prep.chosen_base
    lp = torch.where(log.mask, picked - lse, torch.zeros_like(lse))
    return lp[0] if single else lp


def consumed_mean(log: EventLog, items: Items, upto: torch.Tensor | None = None) -> torch.Tensor:
    """[U, d] sum of the features of each user's consumed items (events where ``upto`` is
    on, all valid events by default): a warm-up estimate of the initial direction."""
    mask = log.mask if upto is None else (log.mask & upto)
    consumed = log.consumed()
    use = (consumed >= 0) & mask
    feats = items.features[consumed.clamp_min(0)] * use[..., None].to(items.features.dtype)
    return feats.sum(dim=1)
