"""Preference dynamics: how showing and consuming items changes what users want.

A model maps ``(u, u0, shown items, chosen slot, noise) -> u'`` for a whole batch. Models
driven by items give each shown item a weight: ``click_weight`` for the clicked one and
``exposure_weight`` for the others (mere exposure; 0 by default), and apply the items in
slate order. Users whose weight is 0 keep their preferences bit for bit. Stochastic
models draw one uniform per user and step, shared by the items of that step's slate.
"""

from __future__ import annotations

from typing import Protocol

import torch

from .geometry import unit
from .specs import (
    AnchoredDynamics,
    BiasedAssimilation,
    BoundedConfidence,
    DynamicsSpec,
    EvansPolarization,
    NoDynamics,
    RecSimInterest,
    TRecsDrift,
)

_EPS = 1e-7


def angle(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Angle in radians between rows of a and b."""
    cos = (unit(a) * unit(b)).sum(dim=-1).clamp(-1.0, 1.0)
    return torch.arccos(cos)


def slerp_toward(u: torch.Tensor, x: torch.Tensor, frac: torch.Tensor) -> torch.Tensor:
    """Rotate each row of u toward the direction of x by ``frac`` of the angle between them,
    keeping the norm of u: the new angle to x is ``(1 - frac) * angle``.

    ``frac`` is [B]. Rows at angle 0 (nothing to do) or pi (no unique direction) are kept.
    """
    norm = u.norm(dim=-1, keepdim=True)
    uh, xh = u / norm.clamp_min(1e-12), unit(x)
    cos = (uh * xh).sum(dim=-1).clamp(-1.0, 1.0)
    theta = torch.arccos(cos)
    sin = torch.sin(theta)
    ok = (sin > _EPS) & (frac > 0)
    safe_sin = torch.where(ok, sin, torch.ones_like(sin))
    a = torch.sin((1 - frac) * theta) / safe_sin
    b = torch.sin(frac * theta) / safe_sin
    moved = norm * (a[:, None] * uh + b[:, None] * xh)
    return torch.where(ok[:, None], moved, u)


class Dynamics(Protocol):
    needs_uniform: bool

    def step(
        self,
        u: torch.Tensor,
        u0: torch.Tensor,
        items: torch.Tensor,
        slot: torch.Tensor,
        uniform: torch.Tensor | None,
    ) -> torch.Tensor: ...


class Static:
    """No dynamics: preferences never change (every policy's induced shift is 0)."""

    needs_uniform = False

    def __init__(self, spec: NoDynamics | None = None) -> None:
        self.spec = spec

    def step(
        self,
        u: torch.Tensor,
        u0: torch.Tensor,
        items: torch.Tensor,
        slot: torch.Tensor,
        uniform: torch.Tensor | None,
    ) -> torch.Tensor:
        return u


class ItemTriggered:
    """Shared weighting of shown items; subclasses define one item's update."""

    needs_uniform = False

    def __init__(
        self,
        spec: TRecsDrift
        | BiasedAssimilation
        | BoundedConfidence
        | RecSimInterest
        | EvansPolarization,
    ) -> None:
        self.spec = spec
        self.click_weight, self.exposure_weight = spec.click_weight, spec.exposure_weight

    def apply(
        self, u: torch.Tensor, x: torch.Tensor, w: torch.Tensor, uniform: torch.Tensor | None
    ) -> torch.Tensor:
        raise NotImplementedError

    def step(
        self,
        u: torch.Tensor,
        u0: torch.Tensor,
        items: torch.Tensor,
        slot: torch.Tensor,
        uniform: torch.Tensor | None,
    ) -> torch.Tensor:
        clicked = slot >= 0
        if self.exposure_weight == 0.0:
            x = items[torch.arange(items.shape[0], device=items.device), slot.clamp_min(0)]
            w = clicked.to(u.dtype) * self.click_weight
            return self.apply(u, x, w, uniform)
        k = items.shape[1]
        slots = torch.arange(k, device=items.device)
        w_all = torch.where(
            slot[:, None] == slots[None, :],
            torch.tensor(self.click_weight, dtype=u.dtype, device=u.device),
            torch.tensor(self.exposure_weight, dtype=u.dtype, device=u.device),
        )
        for j in range(k):
            u = self.apply(u, items[:, j], w_all[:, j], uniform)
        return u


class TRecs(ItemTriggered):
    """T-RECS preference drift (Lucherini et al., "T-RECS: A Simulation Tool to Study the
    Societal Impact of Recommender Systems", 2021): the user's vector is spherically
    interpolated toward the consumed item,

        u' = slerp(u, |u| x/|x|, delta * w),

    which keeps ``|u|`` and scales the angle to the item by ``1 - delta`` exactly (w = 1).
    delta = 0 leaves u unchanged; delta = 1 gives the item's direction.
    """

    spec: TRecsDrift

    def apply(
        self, u: torch.Tensor, x: torch.Tensor, w: torch.Tensor, uniform: torch.Tensor | None
    ) -> torch.Tensor:
        return slerp_toward(u, x, (self.spec.delta * w).clamp(0.0, 1.0))


class Assimilation(ItemTriggered):
    """Biased assimilation (Hazla, Jin, Mossel, Ramnarayan, "A Geometric Model of Opinion
    Polarization", 2019; Dean and Morgenstern, "Preference Dynamics Under Personalized
    Recommendations", EC 2022):

        u' = normalize(u + eta * w * <u, x> x).

    Users move toward content they like and away from content they dislike; for a unit
    item, ``|<u', x>| >= |<u, x>|`` always, so one item shown to everybody splits the
    population into poles at +x and -x.
    """

    spec: BiasedAssimilation

    def apply(
        self, u: torch.Tensor, x: torch.Tensor, w: torch.Tensor, uniform: torch.Tensor | None
    ) -> torch.Tensor:
        dot = (u * x).sum(dim=-1, keepdim=True)
        moved = unit(u + (self.spec.eta * w)[:, None] * dot * x)
        return torch.where((w > 0)[:, None], moved, u)


class Confidence(ItemTriggered):
    """Bounded confidence on the sphere (Deffuant et al. 2000; Hegselmann and Krause 2002):
    an item within angle ``epsilon`` of u pulls u toward it by fraction ``mu * w`` of the
    angle (slerp); items farther away have no effect."""

    spec: BoundedConfidence

    def apply(
        self, u: torch.Tensor, x: torch.Tensor, w: torch.Tensor, uniform: torch.Tensor | None
    ) -> torch.Tensor:
        near = angle(u, x) < self.spec.epsilon
        frac = torch.where(near, (self.spec.mu * w).clamp(0.0, 1.0), torch.zeros_like(w))
        return slerp_toward(u, x, frac)


class Anchored:
    """Friedkin-Johnsen stubbornness (Friedkin and Johnsen, "Social influence and opinions",
    1990), applied every step around an inner item-driven update f:

        u' = normalize(lam * u0 + (1 - lam) * f(u, items)).

    lam = 0 reproduces f; lam = 1 pins users to their initial preferences.
    """

    def __init__(self, spec: AnchoredDynamics) -> None:
        self.spec = spec
        self.inner = build_dynamics(spec.inner)
        self.needs_uniform = self.inner.needs_uniform

    def step(
        self,
        u: torch.Tensor,
        u0: torch.Tensor,
        items: torch.Tensor,
        slot: torch.Tensor,
        uniform: torch.Tensor | None,
    ) -> torch.Tensor:
        f = self.inner.step(u, u0, items, slot, uniform)
        return unit(self.spec.lam * u0 + (1 - self.spec.lam) * f)


class Interest(ItemTriggered):
    """RecSim interest evolution (Ie et al., "RecSim: A Configurable Simulation Platform for
    Recommender Systems", 2019, ``interest_evolution.IEvUserModel.update_state``).

    A consumed item of topic k changes only u_k, by

        delta = step * (1 - |u_k|) * (1 - u_k),

    upward with probability ``(u_k + 1) / 2`` and downward otherwise, then u is clipped to
    [-1, 1]. The expected change has the sign of u_k: interests drift toward +1 or -1.
    """

    needs_uniform = True

    spec: RecSimInterest

    def apply(
        self, u: torch.Tensor, x: torch.Tensor, w: torch.Tensor, uniform: torch.Tensor | None
    ) -> torch.Tensor:
        assert uniform is not None
        mask = torch.nn.functional.one_hot(x.argmax(dim=-1), u.shape[1]).to(u.dtype)
        uk = (u * mask).sum(dim=-1)
        size = self.spec.step * (1 - uk.abs()) * (1 - uk)
        up = uniform < (uk + 1) / 2
        delta = torch.where(up, size, -size) * w
        moved = (u + delta[:, None] * mask).clamp(-1.0, 1.0)
        return torch.where((w > 0)[:, None], moved, u)


LEFT, CENTRE, RIGHT = 0, 1, 2


class Evans(ItemTriggered):
    """Three-source polarization of Evans and Kasirzadeh ("User Tampering in Reinforcement
    Learning Recommender Systems", AIES 2023).

    The preference vector is ``(theta_L, theta_C, theta_R)``, click probabilities for
    left, centre and right content (items are one-hot sources). Showing left content to a
    right-dominant user (theta_R > theta_L) multiplies theta_R by f ~ U(factor_low,
    factor_high), capped at ``cap``; mirrored for right content and left-dominant users.
    Centre content, and users with theta_L == theta_R (centrists), never change. The
    update is triggered by exposure (weight 1 for every shown item); a weight w raises f
    to the power w.
    """

    needs_uniform = True

    spec: EvansPolarization

    def apply(
        self, u: torch.Tensor, x: torch.Tensor, w: torch.Tensor, uniform: torch.Tensor | None
    ) -> torch.Tensor:
        assert uniform is not None
        f = (self.spec.factor_low + (self.spec.factor_high - self.spec.factor_low) * uniform) ** w
        source = x.argmax(dim=-1)
        tl, tr = u[:, LEFT], u[:, RIGHT]
        grow_r = (source == LEFT) & (tr > tl) & (w > 0)
        grow_l = (source == RIGHT) & (tl > tr) & (w > 0)
        new_r = torch.where(grow_r, torch.minimum(tr * f, torch.clamp(tr, min=self.spec.cap)), tr)
        new_l = torch.where(grow_l, torch.minimum(tl * f, torch.clamp(tl, min=self.spec.cap)), tl)
        out = u.clone()
        out[:, LEFT], out[:, RIGHT] = new_l, new_r
        return out


def build_dynamics(spec: DynamicsSpec) -> Dynamics:
    if isinstance(spec, NoDynamics):
        return Static(spec)
    if isinstance(spec, TRecsDrift):
        return TRecs(spec)
    if isinstance(spec, BiasedAssimilation):
        return Assimilation(spec)
    if isinstance(spec, BoundedConfidence):
        return Confidence(spec)
    if isinstance(spec, AnchoredDynamics):
        return Anchored(spec)
    if isinstance(spec, RecSimInterest):
        return Interest(spec)
    return Evans(spec)
