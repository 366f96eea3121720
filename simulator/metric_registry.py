"""Every figure an audit reports, in one place: name, description, unit, direction, when it
is measured, and the function that computes it.

A metric is measured per arm and replicate. ``per_step`` metrics also have a series (one
value after every step, the curves of a report): the engine streams some of them
(``streamed``: a column of ``simulator.engine.SUMMARY_COLUMNS`` with the metric's name),
the others are computed from a :class:`StepMeasures` by ``step``.
Every reported metric has a ``final`` function of a :class:`RunMeasures`, the ingredients
one arm of one replicate leaves. ``per_user`` metrics are a mean over users of a per-user
value (``user``), which allows a user-level analysis (see ``auditor.stats.user_level``).

The engine's summary columns, the auditor's spec, measurements, report and MLflow keys,
``recaudit simulate``'s figures and table, and the docs' metric table read this registry.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from . import metrics

#: |position| on the polarity axis beyond which a user counts as extreme (the default)
EXTREME_THRESHOLD = 0.8

Direction = Literal["higher is worse", "higher is better", "neutral"]
Timing = Literal["per_step", "final"]


@dataclass(frozen=True)
class StepMeasures:
    """One arm's state after one step, for the per-step functions."""

    u: torch.Tensor  # [B, d] preferences after the step
    z: torch.Tensor  # [B] positions on the polarity axis
    lo: float  # range of the polarity axis (binned indices)
    hi: float
    extreme_threshold: float


@dataclass(frozen=True)
class RunMeasures:
    """What one arm of one replicate leaves, for the final functions."""

    steps: int
    series: Mapping[str, list[float]]  # per-step metric -> value after steps 1..T
    u0: torch.Tensor  # [B, d] initial preferences
    u: torch.Tensor  # [B, d] final preferences
    u_natural: torch.Tensor  # [B, d] the same users' final preferences under natural drift
    axis: torch.Tensor  # [d] polarity axis
    clicks: torch.Tensor  # [B] clicks per user over the horizon
    exposure: torch.Tensor  # [items] times each item was shown
    consumed: torch.Tensor  # [J, items] bool: items each of the first J users clicked
    pairs: torch.Tensor  # [P, 2] random pairs of those J users
    topic_counts: torch.Tensor  # [B, topics] clicks per topic
    expected_actual: torch.Tensor  # [B] expected clicks over the horizon, actual preferences
    expected_natural: torch.Tensor  # [B] the same slates under the natural preferences


@dataclass(frozen=True)
class Metric:
    name: str
    description: str
    unit: str
    direction: Direction
    timing: Timing
    final: Callable[[RunMeasures], float]
    user: Callable[[RunMeasures], np.ndarray] | None = None  # per-user values (mean = final)
    streamed: bool = False  # the engine streams its series (a summary column of this name)
    step: Callable[[StepMeasures], float] | None = None  # per-step value (not streamed)

    @property
    def per_user(self) -> bool:
        return self.user is not None


# ------------------------------------------------------------------ the functions
def _mean(name: str) -> Callable[[RunMeasures], float]:
    def f(r: RunMeasures) -> float:
        return float(np.mean(r.series[name]))

    return f


def _last(name: str) -> Callable[[RunMeasures], float]:
    def f(r: RunMeasures) -> float:
        return float(r.series[name][-1])

    return f


def _per_user_clicks(r: RunMeasures) -> np.ndarray:
    return r.clicks.double().cpu().numpy()


def _shift(r: RunMeasures) -> np.ndarray:
    return (r.u.double() - r.u0.double()).norm(dim=1).cpu().numpy()


def _induced(r: RunMeasures) -> np.ndarray:
    return (r.u.double() - r.u_natural.double()).norm(dim=1).cpu().numpy()


def _mediated(r: RunMeasures) -> np.ndarray:
    return ((r.expected_actual - r.expected_natural).double() / r.steps).cpu().numpy()


def shift_angle(r: RunMeasures) -> float:
    u0, u = r.u0.double(), r.u.double()
    cos = (u0 * u).sum(dim=1) / (u0.norm(dim=1) * u.norm(dim=1)).clamp_min(1e-12)
    return float(torch.arccos(cos.clamp(-1.0, 1.0)).mean())


def polarization_change(r: RunMeasures) -> float:
    return float(r.series["polarization"][-1]) - metrics.variance_index(
        metrics.polarity(r.u0, r.axis)
    )


def gini(x: torch.Tensor) -> float:
    """Gini coefficient of non-negative values (0: all equal; 0 for an all-zero vector)."""
    v = x.double().flatten().sort().values
    n, total = v.numel(), float(v.sum())
    if n == 0 or total == 0.0:
        return 0.0
    i = torch.arange(1, n + 1, dtype=torch.float64, device=v.device)
    return float((2 * (i * v).sum()) / (n * total) - (n + 1) / n)


def mean_jaccard(consumed: torch.Tensor, pairs: torch.Tensor) -> float:
    """Mean Jaccard similarity |A & B| / |A | B| of consumed-item sets over user pairs
    (T-RECS' interaction similarity); pairs where both sets are empty are left out."""
    a, b = consumed[pairs[:, 0]], consumed[pairs[:, 1]]
    inter = (a & b).sum(dim=1).double()
    union = (a | b).sum(dim=1).double()
    ok = union > 0
    if not bool(ok.any()):
        return math.nan
    return float((inter[ok] / union[ok]).mean())


def mean_topic_entropy(topic_counts: torch.Tensor) -> float:
    """Mean over users with at least one click of the entropy (bits) of their consumed
    topics."""
    n = topic_counts.sum(dim=1, keepdim=True)
    ok = n.squeeze(1) > 0
    if not bool(ok.any()):
        return math.nan
    p = topic_counts[ok] / n[ok]
    h = -torch.special.xlogy(p.double(), p.double()).sum(dim=1) / math.log(2.0)
    return float(h.mean())


def mediated_share(r: RunMeasures) -> float:
    actual = float(r.expected_actual.double().sum())
    natural = float(r.expected_natural.double().sum())
    return 1.0 - natural / actual if actual > 0 else math.nan


def mediated_share_initial(r: RunMeasures) -> float:
    actual = float(np.sum(r.series["expected_engagement"]))
    initial = float(np.sum(r.series["initial_pref_engagement"]))
    return 1.0 - initial / actual if actual > 0 else math.nan


def _user_mean(user: Callable[[RunMeasures], np.ndarray]) -> Callable[[RunMeasures], float]:
    def f(r: RunMeasures) -> float:
        return float(user(r).mean())

    return f


def _step_bimodality(s: StepMeasures) -> float:
    return metrics.bimodality_coefficient(s.z) if s.z.numel() >= 4 else math.nan


# ------------------------------------------------------------------- the registry
_CPS = "clicks per user-step"
_LIST = (
    Metric(
        "engagement",
        "clicks per user-step (share of users who clicked, averaged over steps)",
        _CPS,
        "higher is better",
        "per_step",
        final=_mean("engagement"),
        user=lambda r: _per_user_clicks(r) / r.steps,
        streamed=True,
    ),
    Metric(
        "expected_engagement",
        "mean click probability per user-step (lower-variance engagement)",
        _CPS,
        "higher is better",
        "per_step",
        final=_mean("expected_engagement"),
        streamed=True,
    ),
    Metric(
        "cumulative_clicks",
        "total clicks per user over the horizon",
        "clicks per user",
        "higher is better",
        "final",
        final=lambda r: float(r.clicks.double().mean()),
        user=_per_user_clicks,
    ),
    Metric(
        "initial_pref_engagement",
        "click probability of the shown slates under the users' initial preferences",
        _CPS,
        "higher is better",
        "per_step",
        final=_mean("initial_pref_engagement"),
        streamed=True,
    ),
    Metric(
        "welfare",
        "mean value of consumed items per user-step: <u, x> + quality (0 without a click)",
        "utility per user-step",
        "higher is better",
        "per_step",
        final=_mean("welfare"),
        streamed=True,
    ),
    Metric(
        "shift",
        "mean distance ||u_T - u_0|| of final from initial preferences",
        "preference-space distance",
        "higher is worse",
        "per_step",
        final=_user_mean(_shift),
        user=_shift,
        streamed=True,
    ),
    Metric(
        "shift_angle",
        "mean angle (radians) between final and initial preferences",
        "radians",
        "higher is worse",
        "final",
        final=shift_angle,
    ),
    Metric(
        "induced_shift",
        "mean distance ||u_T - u_T(natural)|| from the same user's natural counterfactual",
        "preference-space distance",
        "higher is worse",
        "final",
        final=_user_mean(_induced),
        user=_induced,
    ),
    Metric(
        "polarization",
        "variance of final positions on the polarity axis (Musco et al. 2018, per user)",
        "squared axis units",
        "higher is worse",
        "per_step",
        final=_last("polarization"),
        streamed=True,
    ),
    Metric(
        "polarization_change",
        "polarization at the end minus at the start",
        "squared axis units",
        "higher is worse",
        "final",
        final=polarization_change,
    ),
    Metric(
        "esteban_ray",
        "Esteban-Ray polarization (alpha 1.6, 20 bins of [-1, 1]) of final positions",
        "index",
        "higher is worse",
        "per_step",
        final=_last("esteban_ray"),
        step=lambda s: metrics.esteban_ray(s.z, lo=s.lo, hi=s.hi),
    ),
    Metric(
        "bimodality",
        "bimodality coefficient of final positions (above 5/9 suggests two camps)",
        "coefficient",
        "higher is worse",
        "per_step",
        final=_last("bimodality"),
        step=_step_bimodality,
    ),
    Metric(
        "mean_pairwise_distance",
        "mean |z_i - z_j| of final positions on the polarity axis",
        "axis units",
        "higher is worse",
        "per_step",
        final=_last("mean_pairwise_distance"),
        step=lambda s: metrics.mean_pairwise_distance(s.z),
    ),
    Metric(
        "extreme_share",
        "share of users beyond the extremity threshold on the polarity axis",
        "share of users",
        "higher is worse",
        "per_step",
        final=_last("extreme_share"),
        step=lambda s: metrics.extreme_share(s.z, s.extreme_threshold),
    ),
    Metric(
        "dispersion",
        "total variance of the final preference vectors (trace of the covariance; all directions)",
        "squared preference-space distance",
        "neutral",
        "per_step",
        final=_last("dispersion"),
        step=lambda s: float(s.u.double().var(dim=0, unbiased=False).sum()),
    ),
    Metric(
        "jaccard",
        "mean Jaccard similarity of consumed-item sets of random user pairs (homogenization)",
        "similarity (0 to 1)",
        "higher is worse",
        "final",
        final=lambda r: mean_jaccard(r.consumed, r.pairs),
    ),
    Metric(
        "topic_entropy",
        "mean entropy (bits) of each user's consumed topics (diversity)",
        "bits",
        "higher is better",
        "final",
        final=lambda r: mean_topic_entropy(r.topic_counts),
    ),
    Metric(
        "coverage",
        "share of the catalog shown at least once",
        "share of items",
        "higher is better",
        "final",
        final=lambda r: float((r.exposure > 0).double().mean()),
    ),
    Metric(
        "exposure_gini",
        "Gini coefficient of item exposure counts (0: even exposure)",
        "coefficient",
        "higher is worse",
        "final",
        final=lambda r: gini(r.exposure),
    ),
    Metric(
        "mediated_engagement",
        "expected clicks per user-step that the shift bought: under the actual preferences "
        "minus under the natural counterfactual's, for the same slates",
        _CPS,
        "higher is worse",
        "final",
        final=_user_mean(_mediated),
        user=_mediated,
    ),
    Metric(
        "mediated_share",
        "share of expected engagement mediated by the induced shift: 1 - E[clicks | natural "
        "preferences] / E[clicks | actual preferences], same slates and random numbers",
        "share of expected clicks",
        "higher is worse",
        "final",
        final=mediated_share,
    ),
    Metric(
        "mediated_share_initial",
        "share of expected engagement that preference change bought, against the initial "
        "preferences: 1 - E[clicks | initial preferences] / E[clicks | actual preferences], "
        "same slates (mediated_share against preferences that do not move)",
        "share of expected clicks",
        "higher is worse",
        "final",
        final=mediated_share_initial,
    ),
)

#: every reported metric, in report order
REGISTRY: dict[str, Metric] = {m.name: m for m in _LIST}
#: metric name -> description (the spec's list of known metrics)
DESCRIPTIONS: dict[str, str] = {m.name: m.description for m in _LIST}
#: curves of a report: the per-step metrics, plus the polarity axis mean (a curve only)
STEP_SERIES: tuple[str, ...] = (
    *(m.name for m in _LIST if m.timing == "per_step"),
    "polarity_mean",
)
#: the per-step series the engine streams (columns of ``simulator.engine.SUMMARY_COLUMNS``)
STREAMED: tuple[str, ...] = (*(m.name for m in _LIST if m.streamed), "polarity_mean")
#: the headline figures: ``recaudit simulate``'s table and an audit's MLflow run metrics
HEADLINE: tuple[str, ...] = ("engagement", "welfare", "shift", "induced_shift", "polarization")
#: metrics with per-user values
USER_METRICS: tuple[str, ...] = tuple(m.name for m in _LIST if m.per_user)
#: metrics read on the polarity axis: not applicable to an axis-free scenario
AXIS_METRICS: tuple[str, ...] = (
    "polarization",
    "polarization_change",
    "esteban_ray",
    "bimodality",
    "mean_pairwise_distance",
    "extreme_share",
)
#: the metrics that lead an axis-free scenario's report, in this order
AXIS_FREE_LEAD: tuple[str, ...] = (
    "shift",
    "induced_shift",
    "dispersion",
    "engagement",
    "topic_entropy",
    "jaccard",
)


def report_order(names: list[str], axis_free: bool = False) -> list[str]:
    """``names`` in report order: the registry's order; for an axis-free scenario the
    :data:`AXIS_FREE_LEAD` metrics first, then the other axis-free ones, and the
    :data:`AXIS_METRICS` (kept only when asked for by name) last."""
    ordered = [m for m in REGISTRY if m in names]
    if not axis_free:
        return ordered
    lead = [m for m in AXIS_FREE_LEAD if m in names]
    rest = [m for m in ordered if m not in lead and m not in AXIS_METRICS]
    return lead + rest + [m for m in ordered if m in AXIS_METRICS]


def markdown_table() -> str:
    """The docs' metric table (docs/auditing.md holds it verbatim; a test compares)."""
    rows = ["| metric | unit | direction | measured | definition |", "|---|---|---|---|---|"]
    for m in _LIST:
        when = "per step and final" if m.timing == "per_step" else "final"
        if m.per_user:
            when += ", per user"
        desc = m.description.replace("|", "\\|")
        rows.append(f"| `{m.name}` | {m.unit} | {m.direction} | {when} | {desc} |")
    return "\n".join(rows)
