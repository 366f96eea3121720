"""Differentiable per-family state updates, the same maps as :mod:`simulator.dynamics`.

Each family updates a batch of unit preference vectors after one logged event: the
consumed item moves the user (weight 1), shown-but-not-chosen items do not (exposure
weight 0, the simulator's default). Parameters live on an unconstrained scale and are
mapped to their range by a sigmoid or softplus, so any optimizer step is a valid model.

Natural drift's mean reversion (``u' = project(u + m (u0 - u))`` on the sphere) is the
same map as the Friedkin-Johnsen anchor with ``lam = m``, so the anchored family stands
for "an item-driven family plus natural drift"; the drift's random walk has no
deterministic counterpart and is not fitted (see docs/science.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..geometry import unit
from ..specs import (
    AnchoredDynamics,
    BiasedAssimilation,
    BoundedConfidence,
    DynamicsSpec,
    NoDynamics,
    TRecsDrift,
)

#: keeps arccos away from +-1, where its derivative is infinite; the values it changes
#: differ from the simulator's by less than float32 resolution
_COS_MAX = 1.0 - 1e-7
_EPS = 1e-7


@dataclass(frozen=True)
class Param:
    """One parameter: its range (``low``..``high``; ``high=None`` for [low, inf)), a
    starting value, and a resolution below which differences do not matter (the scale
    used for identifiability when the estimate is near 0). A ``threshold`` (an angle
    beyond which nothing moves the user) gets a finer coarse grid: its likelihood peaks
    sharply (:func:`.fit.grid_axes`)."""

    name: str
    low: float
    high: float | None
    init: float
    resolution: float
    threshold: bool = False

    def to_value(self, raw: torch.Tensor) -> torch.Tensor:
        if self.high is None:
            return self.low + torch.nn.functional.softplus(raw)
        return self.low + (self.high - self.low) * torch.sigmoid(raw)

    def to_raw(self, value: float) -> torch.Tensor:
        if self.high is None:
            y = max(value - self.low, 1e-6)
            return torch.tensor(y + math.log(-math.expm1(-y)) if y < 20 else y)
        p = (value - self.low) / (self.high - self.low)
        p = min(max(p, 1e-6), 1 - 1e-6)
        return torch.tensor(math.log(p / (1 - p)))


def slerp(u: torch.Tensor, x: torch.Tensor, frac: torch.Tensor) -> torch.Tensor:
    """:func:`simulator.dynamics.slerp_toward` with finite gradients everywhere."""
    norm = u.norm(dim=-1, keepdim=True)
    uh, xh = u / norm.clamp_min(1e-12), unit(x)
    cos = (uh * xh).sum(dim=-1)
    with torch.no_grad():  # which rows move: decided exactly as the simulator does
        ok = (torch.sin(torch.arccos(cos.clamp(-1.0, 1.0))) > _EPS) & (frac > 0)
    theta = torch.arccos(cos.clamp(-_COS_MAX, _COS_MAX))
    sin = torch.sin(theta)
    safe_sin = torch.where(ok, sin, torch.ones_like(sin))
    a = torch.sin((1 - frac) * theta) / safe_sin
    b = torch.sin(frac * theta) / safe_sin
    moved = norm * (a[:, None] * uh + b[:, None] * xh)
    return torch.where(ok[:, None], moved, u)


def _angle(u: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Angle between rows; the gate compares it with epsilon as the simulator does
    (values within float32 resolution of the simulator's)."""
    cos = (unit(u) * unit(x)).sum(dim=-1).clamp(-_COS_MAX, _COS_MAX)
    return torch.arccos(cos)


Update = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor], float],
    torch.Tensor,
]


def _static(u, u0, x, w, p, smooth):
    return u


def _trecs(u, u0, x, w, p, smooth):
    return slerp(u, x, (p["delta"] * w).clamp(0.0, 1.0))


def _assimilation(u, u0, x, w, p, smooth):
    dot = (u * x).sum(dim=-1, keepdim=True)
    moved = unit(u + (p["eta"] * w)[:, None] * dot * x)
    return torch.where((w > 0)[:, None], moved, u)


def _confidence(u, u0, x, w, p, smooth):
    ang = _angle(u, x)
    if smooth > 0:  # a logistic gate of width ``smooth`` radians, for gradients in epsilon
        gate = torch.sigmoid((p["epsilon"] - ang) / smooth)
        frac = (p["mu"] * w).clamp(0.0, 1.0) * gate
    else:
        frac = torch.where(ang < p["epsilon"], (p["mu"] * w).clamp(0.0, 1.0), torch.zeros_like(w))
    return slerp(u, x, frac)


def _anchored(inner: Update) -> Update:
    def step(u, u0, x, w, p, smooth):
        f = inner(u, u0, x, w, p, smooth)
        lam = p["lam"][:, None] if p["lam"].dim() else p["lam"]  # per-row values allowed
        return unit(lam * u0 + (1 - lam) * f)

    return step


DELTA = Param("delta", 0.0, 1.0, 0.05, 0.005)
ETA = Param("eta", 0.0, None, 0.1, 0.01)
EPSILON = Param("epsilon", 0.0, math.pi, 1.0, 0.02, threshold=True)
MU = Param("mu", 0.0, 1.0, 0.1, 0.005)
LAM = Param("lam", 0.0, 1.0, 0.05, 0.005)


@dataclass(frozen=True)
class Family:
    """A candidate dynamics family: its parameters, its update and its scenario spec."""

    name: str
    title: str
    params: tuple[Param, ...]
    update: Update
    smooth_gate: bool = False  # has a hard threshold, fitted through a logistic gate

    def step(
        self,
        u: torch.Tensor,
        u0: torch.Tensor,
        x: torch.Tensor,
        w: torch.Tensor,
        theta: dict[str, torch.Tensor],
        smooth: float = 0.0,
    ) -> torch.Tensor:
        """One update: ``x`` [B, d] the consumed items, ``w`` [B] 1 where consumed."""
        return self.update(u, u0, x, w, theta, smooth)

    @property
    def anchored(self) -> bool:
        return self.name.startswith("anchored")

    def to_spec(self, theta: dict[str, float]) -> DynamicsSpec:
        """The simulator's dynamics spec with these parameter values."""
        inner: TRecsDrift | BiasedAssimilation | BoundedConfidence
        base = self.name.removeprefix("anchored_")
        if base == "static":
            return NoDynamics()
        if base == "trecs":
            inner = TRecsDrift(delta=theta["delta"])
        elif base == "biased_assimilation":
            inner = BiasedAssimilation(eta=theta["eta"])
        else:
            inner = BoundedConfidence(epsilon=theta["epsilon"], mu=theta["mu"])
        if self.anchored:
            return AnchoredDynamics(lam=theta["lam"], inner=inner)
        return inner


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("static", "static preferences (no drift)", (), _static),
        Family("trecs", "T-RECS drift toward consumed items", (DELTA,), _trecs),
        Family("biased_assimilation", "biased assimilation", (ETA,), _assimilation),
        Family(
            "bounded_confidence",
            "bounded confidence",
            (EPSILON, MU),
            _confidence,
            smooth_gate=True,
        ),
        Family(
            "anchored_trecs",
            "anchored (Friedkin-Johnsen) T-RECS drift = T-RECS plus mean-reverting natural drift",
            (LAM, DELTA),
            _anchored(_trecs),
        ),
        Family(
            "anchored_biased_assimilation",
            "anchored biased assimilation = biased assimilation plus mean-reverting natural drift",
            (LAM, ETA),
            _anchored(_assimilation),
        ),
        Family(
            "anchored_bounded_confidence",
            "anchored bounded confidence = bounded confidence plus mean-reverting natural drift",
            (LAM, EPSILON, MU),
            _anchored(_confidence),
            smooth_gate=True,
        ),
    )
}

#: the candidates fitted by default: static (the baseline) and one of each family
DEFAULT_CANDIDATES = (
    "static",
    "trecs",
    "biased_assimilation",
    "bounded_confidence",
    "anchored_trecs",
)


def family_of_spec(spec: DynamicsSpec) -> tuple[Family, dict[str, float]]:
    """The family and true parameters of a simulator dynamics spec (click-only updates)."""
    if isinstance(spec, NoDynamics):
        return FAMILIES["static"], {}
    prefix, theta = "", {}
    if isinstance(spec, AnchoredDynamics):
        prefix, theta = "anchored_", {"lam": spec.lam}
        spec = spec.inner
    if spec.exposure_weight != 0.0 or spec.click_weight != 1.0:
        raise ValueError("fitted families assume click weight 1 and exposure weight 0")
    if isinstance(spec, TRecsDrift):
        return FAMILIES[prefix + "trecs"], {**theta, "delta": spec.delta}
    if isinstance(spec, BiasedAssimilation):
        return FAMILIES[prefix + "biased_assimilation"], {**theta, "eta": spec.eta}
    if isinstance(spec, BoundedConfidence):
        return FAMILIES[prefix + "bounded_confidence"], {
            **theta,
            "epsilon": spec.epsilon,
            "mu": spec.mu,
        }
    raise ValueError(f"no fitted family for dynamics {spec.kind!r}")
