"""Replicate-level statistics: paired effects, bootstrap intervals, tests and verdicts.

Replicates (seeds) are the independent units: users inside one replicate share a policy
and a catalog and are not independent, so every interval and test resamples replicates,
never users. Effects are paired: the audited policy and a reference ran on the same users
with the same random numbers, replicate by replicate.

Intervals are *expanded* percentile bootstrap intervals (Hesterberg, "What teachers
should know about the bootstrap", The American Statistician 69(4), 2015, section 5.2): the
percentile interval of the bootstrap distribution of the mean, at a widened level chosen
so that for normal data it matches the t interval. The plain percentile interval is too
narrow with few replicates (with 8 it covers about 90% when 95% is asked), which would
make a null difference flag more often than alpha.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

#: exact sign-flip enumeration up to this many replicates, Monte Carlo beyond
EXACT_FLIPS = 16
MC_FLIPS = 20_000


#: domain separator of the analysis streams (the simulations use other streams)
_ANALYSIS = 0xA0D17


def _words(name: str) -> list[int]:
    """Four 32-bit words of a SHA-256 of ``name``: stable across runs, platforms and
    Python's hash randomization."""
    digest = hashlib.sha256(name.encode("utf-8")).digest()[:16]
    return [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)]


def stream(seed: int, *names: str) -> np.random.Generator:
    """The random stream of one statistic, e.g. ``stream(seed, "criterion", metric, ref)``:
    derived from the audit seed and the statistic's names alone, so a statistic's
    resamples never depend on which other statistics were computed, or in which order."""
    entropy = [int(seed), _ANALYSIS, len(names)]
    for name in names:
        entropy += _words(name)
    return np.random.default_rng(np.random.SeedSequence(entropy))


def _finite(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x[np.isfinite(x)]


def expanded_quantile(tail: float, n: int) -> float:
    """The bootstrap-distribution quantile to use for a one-sided bound at level ``tail``
    with ``n`` replicates: Phi(-sqrt(n / (n - 1)) t_{n-1, 1 - tail})."""
    if n < 2:
        return tail
    t = float(sps.t.ppf(1.0 - tail, n - 1))
    return float(sps.norm.cdf(-math.sqrt(n / (n - 1)) * t))


def bootstrap_means(x: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Means of ``resamples`` replicate resamples of x (last axis: replicates). x may be
    [n] or [m, n] (m quantities resampled with the same indices)."""
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[-1]
    idx = rng.integers(0, n, size=(resamples, n))
    return np.asarray(x[..., idx].mean(axis=-1))  # [..., resamples]


def bounds(
    x: np.ndarray, tail: float, resamples: int, rng: np.random.Generator
) -> tuple[float, float]:
    """One-sided lower and upper bounds, each at level ``tail`` (together a two-sided
    interval at 1 - 2 tail), from the expanded percentile bootstrap of the mean. Values
    that are all equal give exactly that value for both bounds."""
    v = _finite(x)
    if v.size == 0:
        return math.nan, math.nan
    if v.size == 1 or np.all(v == v[0]):
        return float(v[0]), float(v[0])
    q = expanded_quantile(tail, v.size)
    means = bootstrap_means(v, resamples, rng)
    lo, hi = np.quantile(means, [q, 1.0 - q])
    return float(lo), float(hi)


def band(
    x: np.ndarray, alpha: float, resamples: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Pointwise two-sided (1 - alpha) bands for curves: x is [steps, replicates]."""
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[1]
    if n < 2:
        return x[:, 0].copy(), x[:, 0].copy()
    q = expanded_quantile(alpha / 2, n)
    means = bootstrap_means(x, resamples, rng)  # [steps, resamples]
    lo = np.quantile(means, q, axis=1)
    hi = np.quantile(means, 1.0 - q, axis=1)
    same = np.all(x == x[:, :1], axis=1)
    lo[same] = x[same, 0]
    hi[same] = x[same, 0]
    return lo, hi


def sign_flip_p(d: np.ndarray, rng: np.random.Generator) -> float:
    """Two-sided paired permutation p-value for mean(d) = 0: the share of sign flips of
    the differences whose mean is at least as far from 0 (exact up to 16 replicates)."""
    v = _finite(d)
    n = v.size
    if n == 0:
        return math.nan
    observed = abs(v.mean())
    if observed == 0.0:
        return 1.0
    if n <= EXACT_FLIPS:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
    else:
        signs = rng.choice((1.0, -1.0), size=(MC_FLIPS, n))
    flipped = np.abs((signs * v).mean(axis=1))
    tol = 1e-12 * max(1.0, observed)
    return float(np.mean(flipped >= observed - tol))


def holm(p: list[float]) -> list[float]:
    """Holm's step-down adjustment (NaN entries are left out and stay NaN)."""
    idx = [i for i, v in enumerate(p) if math.isfinite(v)]
    m = len(idx)
    out = [math.nan] * len(p)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda j: p[j])):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


@dataclass(frozen=True)
class PairedEffect:
    mean: float
    ci_low: float
    ci_high: float
    sd: float
    effect_size: float  # Cohen's d_z; NaN when the differences have no spread
    p_value: float


def paired_effect(
    diffs: np.ndarray, alpha: float, resamples: int, rng: np.random.Generator
) -> PairedEffect:
    """Mean paired difference with a two-sided (1 - alpha) interval, d_z and a p-value."""
    v = _finite(diffs)
    if v.size == 0:
        return PairedEffect(*(math.nan,) * 6)
    mean = float(v.mean())
    sd = float(v.std(ddof=1)) if v.size > 1 else 0.0
    lo, hi = bounds(v, alpha / 2, resamples, rng)
    dz = mean / sd if sd > 0 else math.nan
    return PairedEffect(mean, lo, hi, sd, dz, sign_flip_p(v, rng))


def decide(lower: float, upper: float, margin: float) -> str:
    """pass: the upper bound is within the margin; flag: the lower bound exceeds it;
    inconclusive: the interval straddles it (or could not be computed)."""
    if not (math.isfinite(lower) and math.isfinite(upper)):
        return "inconclusive"
    if upper <= margin:
        return "pass"
    if lower > margin:
        return "flag"
    return "inconclusive"


# ------------------------------------------------------------- user-level analysis
@dataclass(frozen=True)
class UserLevel:
    """Mean of per-user paired differences, clustered (stratified) by replicate."""

    mean: float
    se: float
    df: int


def user_level(d: np.ndarray) -> UserLevel:
    """``d`` is [replicates, users] paired differences (the same user in both arms, common
    random numbers). Valid when users are conditionally independent given the policy:
    then the mean of replicate means has variance sum_r s_r^2 / n_r / R^2, estimated
    within replicates, with R (n - 1) degrees of freedom instead of R - 1."""
    d = np.asarray(d, dtype=np.float64)
    r, n = d.shape
    means = d.mean(axis=1)
    if n < 2:
        return UserLevel(float(means.mean()), math.nan, 0)
    var = d.var(axis=1, ddof=1).sum() / n / r**2
    return UserLevel(float(means.mean()), float(math.sqrt(var)), r * (n - 1))


def t_bounds(mean: float, se: float, df: int, tail: float) -> tuple[float, float]:
    """One-sided t bounds at level ``tail`` each; a zero standard error gives the mean."""
    if not (math.isfinite(mean) and math.isfinite(se)) or df < 1:
        return math.nan, math.nan
    if se == 0.0:
        return mean, mean
    q = float(sps.t.ppf(1.0 - tail, df))
    return mean - q * se, mean + q * se


# ------------------------------------------------------------------------ power
#: the power at which minimum detectable effects and sample sizes are stated
POWER = 0.8


def detectable(se: float, df: int, level: float, power: float = POWER) -> float:
    """Minimum detectable effect: the distance between the true effect and the margin
    that a one-sided test at ``level`` detects with probability ``power`` (normal or t
    approximation, with the design's standard error)."""
    if not math.isfinite(se) or df < 1:
        return math.nan
    return float((sps.t.ppf(1.0 - level, df) + sps.t.ppf(power, df)) * se)


def replicates_needed(
    sd: float, gap: float, level: float, power: float = POWER, limit: int = 100_000
) -> int | None:
    """Smallest number of replicates R whose minimum detectable effect (sd / sqrt(R),
    R - 1 degrees of freedom) is at most ``gap`` = |estimate - margin|; None when no
    number up to ``limit`` would (a zero gap, or no spread to scale)."""
    if not (math.isfinite(sd) and math.isfinite(gap)) or gap <= 0 or sd <= 0:
        return None
    z = sps.norm.ppf(1.0 - level) + sps.norm.ppf(power)
    r = max(2, math.ceil((z * sd / gap) ** 2))
    while r <= limit:
        if detectable(sd / math.sqrt(r), r - 1, level, power) <= gap:
            return r
        r += max(1, r // 20)
    return None


def users_needed(
    se: float, users: int, gap: float, level: float, power: float = POWER
) -> int | None:
    """Users per replicate that would bring the user-level minimum detectable effect down
    to ``gap`` (the standard error scales as 1 / sqrt(users))."""
    if not (math.isfinite(se) and math.isfinite(gap)) or gap <= 0 or se <= 0:
        return None
    z = sps.norm.ppf(1.0 - level) + sps.norm.ppf(power)
    return max(users, math.ceil(users * (z * se / gap) ** 2))
