"""Intervals and identifiability from the marginal likelihood around its maximum.

A stencil of points around the estimate (on the unconstrained scale, step sizes set so
that the profile drops by a few log-likelihood units) gives the local curvature, i.e. the
observed information of the parameters with the users' initial preferences integrated
out. With several parameters a second stencil follows the first's covariance: along its
principal axes, a few standard errors wide, so that correlated parameters' replicates
stay inside it. Because the likelihood is a sum of per-user contributions, a bootstrap
replicate over users is a reweighted sum at the same points: each replicate's estimate is
the maximum of a quadratic fitted to its reweighted stencil (exact for the estimator, up to
the quadratic's fit; replicates whose maximum falls outside the stencil are clamped to
its edge and counted; a replicate whose quadratic is not concave takes its best stencil
point, never the centre, which would pile replicates on the estimate).

A parameter is *identified* when its standard error (the larger of the curvature's and
the bootstrap's) is under 20% of its scale (the estimate, or the parameter's resolution
when the estimate is smaller), *weakly identified* under 50%, and *not identified*
otherwise or when the profile has no curvature (a flat or non-concave profile).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch

from .families import Family
from .fit import Evaluator, Point

IDENTIFIED, WEAK, NOT = "identified", "weakly identified", "not identified"
#: relative standard errors separating the three statuses
IDENTIFIED_BELOW, WEAK_BELOW = 0.2, 0.5
#: times the stencil is centred again when the data's maximum lies outside it
RECENTRE = 3
#: standard errors the second stencil of several parameters reaches along each of the
#: covariance's principal axes (bootstrap replicates beyond it are clamped to it)
WHITE_EDGE = 3.0
#: the longest step (unconstrained scale) of that stencil along one axis
WHITE_LONGEST = 3.0
#: steps tried per parameter (each a third or three times the last): the first is read
#: off the search's own points, so a profile still too steep after these is not smooth
STEP_TRIES = 5


@dataclass(frozen=True)
class ParamResult:
    name: str
    estimate: float
    se: float  # natural scale; inf when there is no curvature
    interval: tuple[float, float]  # bootstrap percentile 95%
    relative_se: float
    status: str
    clamped_share: float  # bootstrap replicates whose maximum left the stencil
    #: the likelihood's maximum lies inside the final stencil, and the profile is smooth
    #: there (no spike at the best point: :func:`_step_sizes`)
    located: bool = True
    #: the fit's own estimate, where a correction (see :mod:`.debias`) replaced it
    uncorrected: float | None = None


def status_of(relative_se: float) -> str:
    """Identified, weakly identified or not, by the relative standard error."""
    if relative_se < IDENTIFIED_BELOW:
        return IDENTIFIED
    return WEAK if relative_se < WEAK_BELOW else NOT


def _step_sizes(ev: Evaluator, best: Point) -> tuple[list[float], bool]:
    """Per parameter, a step on the unconstrained scale over which the profile drops by
    0.5 to 8 log-likelihood units (or the largest tried, for a flat profile; the shorter
    of two steps a factor 3 apart that bracket that range, for a profile flatter on top
    than a parabola); and whether the profile is smooth there: False when it drops by
    more than 8 units over the shortest step tried, a spike at the best point that no
    quadratic describes."""
    steps = []
    smooth = True
    for i in range(len(best.raw)):
        h = _first_step(ev, best, i)
        tried: dict[float, float] = {}  # step -> the profile's drop over it
        for _ in range(STEP_TRIES):
            lo = list(best.raw)
            hi = list(best.raw)
            lo[i] -= h
            hi[i] += h
            a, b = ev.many([tuple(lo), tuple(hi)])
            drop = tried[h] = best.marginal - 0.5 * (a.marginal + b.marginal)
            shorter = [k for k in tried if k < h and tried[k] < 0.5]
            if drop < 0.5 and h < 2.0:
                if any(k > h and tried[k] > 8.0 for k in tried):
                    break  # bracketed: this one
                h *= 3
            elif drop > 8.0:
                if shorter:  # bracketed: the shorter one
                    h = max(shorter)
                    break
                h /= 3
            else:
                break
        smooth = smooth and tried[min(tried)] <= 8.0
        steps.append(h)
    return steps, smooth


def _first_step(ev: Evaluator, best: Point, i: int) -> float:
    """A first step along axis ``i`` from the search's own points: where a parabola
    through the best point and its nearest evaluated neighbours on each side of that axis
    drops by 2 log-likelihood units (0.1 when there are none, or no curvature)."""
    lo = hi = None
    for q in ev.profile.points.values():
        if any(a != b for j, (a, b) in enumerate(zip(q.raw, best.raw, strict=True)) if j != i):
            continue
        off = q.raw[i] - best.raw[i]
        if off < 0 and (lo is None or off > lo[0]):
            lo = (off, q.marginal)
        elif off > 0 and (hi is None or off < hi[0]):
            hi = (off, q.marginal)
    if lo is None or hi is None:
        return 0.1
    # the parabola through (lo, f0 = 0, hi) in offsets from the best point
    (x1, f1), (x2, f2) = lo, hi
    f1, f2 = f1 - best.marginal, f2 - best.marginal
    curv = 2 * (f1 / x1 - f2 / x2) / (x1 - x2)  # the second derivative
    if not curv < 0:
        return 0.1
    return float(min(max(math.sqrt(4.0 / -curv), 0.003), 2.0))


def _design(z: np.ndarray) -> np.ndarray:
    """Quadratic design: 1, z_i, z_i z_j (i <= j)."""
    cols = [np.ones(len(z))]
    p = z.shape[1]
    cols += [z[:, i] for i in range(p)]
    cols += [z[:, i] * z[:, j] for i in range(p) for j in range(i, p)]
    return np.stack(cols, axis=1)


def _quad_max(coef: np.ndarray, p: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Maximum of the fitted quadratic and its negative Hessian (None if not concave)."""
    g = coef[1 : 1 + p]
    hess = np.zeros((p, p))
    k = 1 + p
    for i in range(p):
        for j in range(i, p):
            if i == j:
                hess[i, i] = 2 * coef[k]
            else:
                hess[i, j] = hess[j, i] = coef[k]
            k += 1
    a = -hess
    if np.any(np.linalg.eigvalsh(a) <= 1e-9):
        return np.zeros(p), None
    return np.linalg.solve(a, g), a


def _quad_estimate(
    values: np.ndarray, center: np.ndarray, frame: np.ndarray, grid: np.ndarray, pinv: np.ndarray
) -> tuple[np.ndarray, np.ndarray | None, bool]:
    """The maximum of the quadratic fitted to ``values`` at the stencil's points
    ``center + frame @ g`` (g in ``grid``), on the unconstrained scale; the quadratic's
    negative Hessian in stencil units (None if not concave); whether the maximum was
    clamped to the stencil (outside it, or no concave quadratic: then the best stencil
    point, never the centre, which would pile bootstrap replicates on the estimate)."""
    p = grid.shape[1]
    edge = float(np.max(np.abs(grid)))
    coef = pinv @ (values - values.mean())
    z, a = _quad_max(coef, p)
    clamped = a is None or bool(np.any(np.abs(z) > edge))
    if a is None:
        z = grid[int(np.argmax(values))]
    z = np.clip(z, -edge, edge)
    return center + frame @ z, a, clamped


def _stencil(
    ev: Evaluator, center: np.ndarray, frame: np.ndarray, grid: np.ndarray, pinv: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, bool]:
    """Every user's contribution at the stencil's points [U, S], and the whole data's
    quadratic estimate there (see :func:`_quad_estimate`)."""
    points = ev.many([tuple(float(r) for r in center + frame @ g) for g in grid])
    contrib = torch.stack([pt.marginal_u for pt in points], dim=1).numpy()
    return (contrib, *_quad_estimate(contrib.sum(axis=0), center, frame, grid, pinv))


def analyse(
    ev: Evaluator, best: Point, replicates: int = 200, seed: int = 0
) -> tuple[list[ParamResult], np.ndarray]:
    """Per-parameter results, and the bootstrap estimates [R, p] on the natural scale."""
    fam: Family = ev.family
    p = len(fam.params)
    if p == 0:
        return [], np.zeros((replicates, 0))
    offsets = [-2, -1, 0, 1, 2] if p == 1 else [-1, 0, 1]
    grid = np.array(list(itertools.product(offsets, repeat=p)), dtype=float)
    pinv = np.linalg.pinv(_design(grid))
    edge = float(np.max(np.abs(grid)))
    # The stencil is centred on the best point; when the full data's quadratic has its
    # maximum outside it (a search along the axes stopped short on a tilted ridge of
    # correlated parameters), that maximum is evaluated and the stencil centred again on
    # the best point evaluated, up to RECENTRE times. A maximum still outside leaves
    # every parameter not identified.
    for attempt in range(RECENTRE + 1):
        center = np.array(best.raw)
        steps, smooth = _step_sizes(ev, best)
        frame = np.diag(steps)  # stencil offsets -> unconstrained scale
        contrib, raw_hat, a_hat, off = _stencil(ev, center, frame, grid, pinv)
        if a_hat is not None and not off:  # the quadratic's maximum, inside the stencil
            ev(tuple(float(r) for r in raw_hat))
            break
        if a_hat is not None:  # outside: a Newton step to it (at most 10 stencil widths)
            total = contrib.sum(axis=0)
            z, _ = _quad_max(pinv @ (total - total.mean()), p)
            z = np.clip(z, -10 * edge, 10 * edge)
            ev(tuple(float(r) for r in center + frame @ z))
        assert ev.profile.best is not None
        if ev.profile.best is best or attempt == RECENTRE:
            break
        best = ev.profile.best
    # A best point that towers over its nearest neighbours (a user's marginal estimated
    # far better there than at the points around it) is no maximum a quadratic can
    # describe: its stencil shrank onto it and gave an interval 1e-5 wide (biased
    # assimilation, seed 7005, before the fit took users off saddles)
    inside = a_hat is not None and not off and smooth
    if inside and p > 1:
        # Steps chosen axis by axis span a few *conditional* standard errors; where the
        # parameters are correlated (an anchor and a drift rate) the estimate moves
        # further than that along the ridge, and bootstrap replicates fell outside the
        # stencil and were clamped (intervals too narrow and off-centre). A second
        # stencil along the fitted covariance's principal axes reaches WHITE_EDGE
        # standard errors in every direction.
        assert ev.profile.best is not None and a_hat is not None
        eig, vec = np.linalg.eigh(np.linalg.inv(a_hat))
        white = frame @ vec @ np.diag(np.sqrt(eig)) * WHITE_EDGE
        # a direction the data barely constrain: no further than the search's box allows
        white = white * np.minimum(1.0, WHITE_LONGEST / np.linalg.norm(white, axis=0))
        center_w = np.array(ev.profile.best.raw)
        found = _stencil(ev, center_w, white, grid, pinv)
        if found[2] is not None and not found[3]:
            center, frame = center_w, white
            contrib, raw_hat, a_hat, off = found
            ev(tuple(float(r) for r in raw_hat))

    # the estimate is the best point evaluated: the search's, a stencil point or the
    # quadratic's maximum
    assert ev.profile.best is not None
    best = ev.profile.best
    rng = np.random.default_rng(seed)
    users = contrib.shape[0]
    boot = np.empty((replicates, p))
    clamped = np.zeros(replicates, dtype=bool)
    for r in range(replicates):
        counts = np.bincount(rng.integers(0, users, users), minlength=users)
        raw_r, _, clamped[r] = _quad_estimate(counts @ contrib, center, frame, grid, pinv)
        boot[r] = [
            float(q.to_value(torch.tensor(v))) for q, v in zip(fam.params, raw_r, strict=True)
        ]
    results = []
    cov_raw = None
    if a_hat is not None:
        cov_raw = frame @ np.linalg.inv(a_hat) @ frame.T  # back to unconstrained units
    for i, q in enumerate(fam.params):
        value = best.theta[q.name]
        slope = _derivative(q, best.raw[i])
        se_curv = math.sqrt(cov_raw[i, i]) * slope if cov_raw is not None else math.inf
        se_boot = float(np.std(boot[:, i], ddof=1)) if replicates > 1 else math.inf
        se = max(se_curv, se_boot)
        scale = max(abs(value), q.resolution)
        rel = se / scale
        status = status_of(rel)
        if cov_raw is None or not inside:
            status = NOT
        lo, hi = np.percentile(boot[:, i], [2.5, 97.5])
        results.append(
            ParamResult(
                name=q.name,
                estimate=value,
                se=se,
                interval=(float(lo), float(hi)),
                relative_se=rel,
                status=status,
                clamped_share=float(clamped.mean()),
                located=inside,
            )
        )
    return results, boot


def _derivative(q, raw: float) -> float:
    t = torch.tensor(float(raw), requires_grad=True)
    (g,) = torch.autograd.grad(q.to_value(t), t)
    return float(g)


def bootstrap_ratio(
    num: np.ndarray, den: np.ndarray, replicates: int, seed: int
) -> tuple[float, float, float]:
    """sum(num) / sum(den) and its 95% bootstrap-over-users percentile interval."""
    rng = np.random.default_rng(seed)
    users = len(num)
    est = float(num.sum() / max(den.sum(), 1e-12))
    vals = np.empty(replicates)
    for r in range(replicates):
        counts = np.bincount(rng.integers(0, users, users), minlength=users)
        vals[r] = (counts @ num) / max(counts @ den, 1e-12)
    lo, hi = np.percentile(vals, [2.5, 97.5])
    return est, float(lo), float(hi)
