"""Correction by simulation of the bias the smoothed threshold gate leaves.

Bounded confidence moves a user only toward items within a hard angle ``epsilon``; the
fit replaces that step by a logistic gate :data:`.fit.SMOOTH` radians wide so that the
likelihood is smooth in ``epsilon``. On logs simulated with a hard threshold the gate's
estimates came out a few percent off, further than their intervals reach
(docs/results.md). Narrower gates did not help: the importance-sampled likelihood then
jumps with its proposal's centres.

The bias is estimated the way the fit incurred it (indirect inference, Gourieroux,
Monfort and Renault 1993, with the gate model as its own auxiliary model): new choices
are simulated from the *hard*-threshold model on the log's own slates, each user starting
from a draw of their initial preferences from their posterior under that hard model at
the parameters simulated at (:func:`.fit.posterior_u0`), and fitted with the gate again.
The shift of that fit from the parameters simulated at is the bias. It is taken first at
the gate's estimate, then at the estimate less that bias (:data:`STEPS`), with the same
simulation and resampling seeds, and the last one is subtracted on the unconstrained
scale.

The interval is widened for what the correction does to the estimate's noise. The bias
moves with the parameters (its slope ``G``, on the unconstrained scale, is measured by
finite differences of simulated fits with common random numbers: the steps' own
displacement, and a probe at the last point simulated at along each direction the steps
did not move in). Linearized, two steps map the gate's estimate's error ``x`` and one
simulated fit's noise ``e`` to the corrected estimate's error ``(I - G + G^2) x + (G - I)
e``; where the bias grows as the estimate falls (``G`` negative) both are
amplified. With ``e`` as noisy as ``x`` (each simulated fit is as noisy as the fit
itself), each half-width is multiplied by the square root of that error's variance over
the gate's own (:func:`widening`; ``sqrt(1 + 1/sims)`` where ``G`` is 0).

Where the users start matters (docs/results.md). From their modes, which lean toward the
items they chose on those very slates, the simulated fits came out lower than the gate's
fit to the log and the correction left ``epsilon`` 0.44% high. From draws of the *gate's*
posterior at its estimate, still +0.3% (twelve of thirteen repetitions above the truth):
that posterior is narrower than the truth's spread (its draws 0.27 rad from the modes on
average, the true initial preferences 0.30). The hard threshold's posterior draws sit
0.30 rad from them, as the truth does: distributed with the slates as the true initial
preferences are, where the model holds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from .families import FAMILIES, Family
from .fit import Evaluator, Point, posterior_u0, raw_to_theta, refit, theta_tensors
from .likelihood import ChoiceForm, Items, prepared
from .log import EventLog
from .uncertainty import ParamResult, analyse, derivative, status_of

#: simulated logs the bias is averaged over, at each step
SIMS = 1
#: steps toward the parameters whose simulated fits the gate's estimate is the mean of
STEPS = 2
#: the shortest displacement, in the gate's standard errors, that measures the bias's
#: slope: a probe goes at least this far, and a step's displacement shorter than this
#: is probed again instead (a simulated fit's noise would swamp its difference)
PROBE_SE = 3.0


def simulate(
    family: Family,
    theta: dict[str, float],
    u0: torch.Tensor,
    log: EventLog,
    items: Items,
    choice: ChoiceForm,
    seed: int,
) -> tuple[EventLog, torch.Tensor]:
    """The log's slates and mask with new choices drawn from ``family`` at ``theta``
    (hard threshold, ``smooth`` 0) from initial preferences ``u0`` [U, d]: the choice
    model of the likelihood (MNL over the slate plus the outside option where the log has
    one), each user's state carried as the likelihood carries it (:func:`states`); and
    each user's state before each event [U, T, d]."""
    prep = prepared(log, items, choice)
    gen = torch.Generator().manual_seed(seed)
    th = theta_tensors(theta)
    users, steps, k = log.slates.shape
    dtype = prep.shown.dtype
    u0 = u0.to(dtype)
    u = u0
    chosen = torch.full((users, steps), -1, dtype=torch.long)
    path = []
    outside = choice.no_click_utility
    for t in range(steps):
        path.append(u)
        logits = torch.einsum("ud,ukd->uk", u, prep.shown[:, t]) / choice.temperature
        logits = logits + prep.base[:, t]
        if outside is not None:
            c0 = torch.full((users, 1), outside / choice.temperature, dtype=logits.dtype)
            logits = torch.cat([logits, c0], dim=1)
        pick = torch.multinomial(torch.softmax(logits, dim=1), 1, generator=gen)[:, 0]
        valid = log.mask[:, t]
        slot = torch.where((pick < k) & valid, pick, torch.full_like(pick, -1))
        chosen[:, t] = slot
        clicked = (slot >= 0).to(dtype)
        # as states() does: every valid event updates (an anchored family's pull toward
        # u0 acts on a no-click too), the consumed item's features 0 on a no-click
        x = prep.shown[:, t].gather(1, slot.clamp_min(0)[:, None, None].expand(-1, 1, u.shape[1]))
        new = family.step(u, u0, x[:, 0] * clicked[:, None], clicked, th, 0.0)
        u = torch.where(valid[:, None], new, u)
    return replace(log, chosen=chosen), torch.stack(path, dim=1)


@dataclass(frozen=True)
class Correction:
    """The bias of the gate's fit, on the unconstrained scale, at the corrected estimate,
    and the simulated fits it came from."""

    raw_bias: tuple[float, ...]
    #: per step, the parameters simulated at and each simulated log's estimate
    steps: tuple[dict[str, Any], ...]
    sims: int
    #: d(bias)/d(parameters) on the unconstrained scale [p][p] (row: the bias's
    #: component), from finite differences of the simulated fits; None when not measured
    slope: tuple[tuple[float, ...], ...] | None = None
    #: the probes' points (natural scale) and each simulated log's estimate there
    probes: tuple[dict[str, Any], ...] = ()


def _simulated_fit(
    ev: Evaluator, best: Point, at: tuple[float, ...], s: int, u0: torch.Tensor
) -> Point | None:
    """The gate's fit to choices simulated by the hard threshold at ``at`` (unconstrained
    scale) from the initial preferences ``u0`` (a draw from each user's posterior) on the
    log's slates, located as the fit's own estimate is: a search from ``best``, then the
    stencil whose quadratic maximum is the estimate (a search stopped a step short moved
    epsilon by as much as the bias's noise). None when its maximum was not located."""
    fam, seed = ev.family, ev.seed
    theta = raw_to_theta(fam, at)
    sim_log, _ = simulate(fam, theta, u0, ev.log, ev.items, ev.choice, seed + 7919 * s)
    sim_ev = Evaluator(fam, sim_log, ev.items, ev.choice, seed=seed + s)
    found, _ = analyse(sim_ev, refit(sim_ev, best.theta), replicates=2, seed=seed)
    if not all(r.located for r in found):
        return None
    return sim_ev.profile.best


def gate_bias(
    ev: Evaluator,
    best: Point,
    sims: int = SIMS,
    steps: int = STEPS,
    progress: Callable[[str], None] | None = None,
    se_raw: Sequence[float] | None = None,
) -> Correction | None:
    """The gate's bias where it matters, at the corrected estimate: first at ``best``
    (the gate's estimate), then at ``best`` less that bias, ``steps`` times in all (the
    fixed point of indirect inference, reached in a step or two: the bias moves with the
    parameters, and at the gate's estimate it under-corrected ``mu`` by a third). Each
    step simulates ``sims`` logs with the same seeds (common random numbers) and takes the
    mean shift of their fits. With ``se_raw`` (the gate's standard errors on the
    unconstrained scale), the bias's slope is measured too (:func:`_slope`). None when a
    simulated fit's maximum was not located. ``progress`` hears of each simulated fit."""
    at = best.raw
    bias = tuple(0.0 for _ in at)
    done: list[dict[str, Any]] = []
    ats, means = [], []
    # the probes usually needed (one fewer than the parameters after two steps or more)
    total = (steps + (max(len(at) - (steps > 1), 0) if se_raw is not None else 0)) * sims
    hard = replace(ev.family, smooth_gate=False)

    def fits(where: tuple[float, ...], first: int, total: int) -> list[Point] | None:
        # each simulated log's users start from a draw of their posterior under the hard
        # threshold simulated from, at the parameters simulated at, around the gate's
        # modes; the same seed at every point (common random numbers)
        here = replace(best, raw=where, theta=raw_to_theta(ev.family, where))
        got = []
        for s in range(1, sims + 1):
            if progress:
                progress(
                    f"correcting {ev.family.name}'s threshold-gate bias by simulation "
                    f"({first + s} of {total})"
                )
            u0 = posterior_u0(ev, here, ev.seed + 104729 * s, family=hard)
            point = _simulated_fit(ev, best, where, s, u0)
            if point is None:
                return None
            got.append(point)
        return got

    for step in range(steps):
        fitted = fits(at, step * sims, total)
        if fitted is None:
            return None
        shifts = [np.subtract(f.raw, at) for f in fitted]
        bias = tuple(float(b) for b in np.mean(shifts, axis=0))
        ats.append(np.array(at))
        means.append(np.mean([f.raw for f in fitted], axis=0))
        done.append({"at": raw_to_theta(ev.family, at), "fitted": [f.theta for f in fitted]})
        at = tuple(r - b for r, b in zip(best.raw, bias, strict=True))
    if se_raw is None:
        return Correction(bias, tuple(done), sims)
    scale = np.asarray(se_raw, dtype=float)
    moves, responses = _step_moves(ats, means, scale)
    extra = _probe_steps(moves, scale)
    probed: list[dict[str, Any]] = []
    for j, probe in enumerate(extra):
        where = tuple(float(v) for v in ats[-1] + probe)
        fitted = fits(where, (steps + j) * sims, (steps + len(extra)) * sims)
        if fitted is None:
            return None
        moves.append(probe)
        responses.append(np.mean([f.raw for f in fitted], axis=0) - means[-1])
        probed.append({"at": raw_to_theta(ev.family, where), "fitted": [f.theta for f in fitted]})
    slope = _slope(moves, responses)
    return Correction(bias, tuple(done), sims, slope, tuple(probed))


def _step_moves(
    ats: list[np.ndarray], means: list[np.ndarray], se_raw: np.ndarray
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The steps' displacements and their simulated fits' responses (common random
    numbers), those displacements at least ``PROBE_SE`` standard errors long only."""
    moves, responses = [], []
    for k in range(1, len(ats)):
        move = ats[k] - ats[k - 1]
        if np.linalg.norm(move / se_raw) >= PROBE_SE:
            moves.append(move)
            responses.append(means[k] - means[k - 1])
    return moves, responses


def _probe_steps(moves: list[np.ndarray], se_raw: np.ndarray) -> list[np.ndarray]:
    """Displacements that, with ``moves``, span the parameters: orthogonal to them in
    standard-error units, as long as the longest of them (at least ``PROBE_SE``)."""
    p = len(se_raw)
    white = [m / se_raw for m in moves][:p]
    length = max([PROBE_SE, *(float(np.linalg.norm(w)) for w in white)])
    if white:
        q, _ = np.linalg.qr(np.stack(white, axis=1), mode="complete")
        basis = q[:, len(white) :]
    else:
        basis = np.eye(p)
    return [se_raw * basis[:, j] * length for j in range(basis.shape[1])]


def _slope(
    moves: list[np.ndarray], responses: list[np.ndarray]
) -> tuple[tuple[float, ...], ...] | None:
    """The bias's slope ``G``: the simulated fits respond to a displacement ``a`` by
    ``(I + G) a``, solved from as many displacements as parameters. None where they do not
    span the parameters or give no finite slope."""
    a = np.stack(moves, axis=1)
    f = np.stack(responses, axis=1)
    if a.shape[0] != a.shape[1] or np.linalg.matrix_rank(a) < a.shape[0]:
        return None
    g = f @ np.linalg.inv(a) - np.eye(a.shape[0])
    if not np.all(np.isfinite(g)):
        return None
    return tuple(tuple(float(v) for v in row) for row in g)


def widening(
    family: Family,
    best: Point,
    results: list[ParamResult],
    boot: np.ndarray | None,
    correction: Correction,
) -> list[float]:
    """Per parameter, the factor the correction multiplies the gate's standard error by
    (module docstring): the corrected estimate's error, linearized through the steps taken
    with the bias's slope ``G``, is ``A x + B e`` with ``x`` the gate's error and ``e`` one
    simulated fit's noise (as large, ``1/sims`` of it in a step's mean); ``A``, ``B``
    follow the steps. The gate's covariance on the unconstrained scale takes its standard
    errors from ``results`` and its correlation from the bootstrap estimates ``boot``."""
    p = len(family.params)
    base = math.sqrt(1.0 + 1.0 / correction.sims)
    if correction.slope is None:
        return [base] * p
    g = np.array(correction.slope)
    sd = np.array(
        [
            r.se / derivative(q, best.raw[i])
            for i, (q, r) in enumerate(zip(family.params, results, strict=True))
        ]
    )
    corr = np.eye(p)
    if boot is not None and len(boot) > 2 and p > 1:
        raw = np.array(
            [
                [float(q.to_raw(float(v))) for q, v in zip(family.params, row, strict=True)]
                for row in boot
            ]
        )
        if np.all(np.isfinite(raw)) and np.all(raw.std(axis=0) > 0):
            corr = np.corrcoef(raw, rowvar=False)
    if not np.all(np.isfinite(sd)) or np.any(sd <= 0):
        return [base] * p
    cov = corr * np.outer(sd, sd)
    eye = np.eye(p)
    a, b = eye, np.zeros((p, p))
    for _ in correction.steps:  # a_{k+1} = estimate - bias(a_k), bias(a) = b0 + G a + e
        a, b = eye - g @ a, -eye - g @ b
    var = a @ cov @ a.T + b @ cov @ b.T / correction.sims
    return [float(math.sqrt(max(var[i, i], 0.0) / cov[i, i])) for i in range(p)]


def corrected(
    family: Family,
    best: Point,
    results: list[ParamResult],
    correction: Correction,
    boot: np.ndarray | None = None,
) -> list[ParamResult]:
    """Each parameter's estimate with the bias subtracted and its interval moved with it
    and widened (:func:`widening`), both on the unconstrained scale (so that they stay in
    the parameter's range); its standard error widened alike, and its identifiability
    judged again on that."""
    widen = widening(family, best, results, boot, correction)
    out = []
    for i, (q, r) in enumerate(zip(family.params, results, strict=True)):
        raw = best.raw[i]
        centre = raw - correction.raw_bias[i]
        lo, hi = (float(q.to_raw(v)) for v in r.interval)
        lo = centre - max(0.0, raw - lo) * widen[i]
        hi = centre + max(0.0, hi - raw) * widen[i]
        new, lo, hi = (float(q.to_value(torch.tensor(v))) for v in (centre, lo, hi))
        se = r.se * widen[i]
        rel = se / max(abs(new), q.resolution)
        status = status_of(rel)
        out.append(
            replace(
                r,
                estimate=new,
                uncorrected=r.estimate,
                se=se,
                relative_se=rel,
                status=status,
                interval=(lo, hi),
                widening=widen[i],
            )
        )
    return out


def corrects(names: Iterable[str]) -> int:
    """Fits the correction may add to one fit of these candidates (``STEPS`` x ``SIMS``
    where a family with a smoothed threshold is among them and so may be selected; each
    about one family's fit): for budgets."""
    gated = [FAMILIES[n] for n in names if n in FAMILIES and FAMILIES[n].smooth_gate]
    # at most one probe per parameter (the steps' displacement usually saves one)
    most = max((len(f.params) for f in gated), default=0)
    return (STEPS + most) * SIMS if gated else 0


def analyse_fit(
    ev: Evaluator,
    best: Point,
    replicates: int = 200,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> tuple[list[ParamResult], np.ndarray, Correction | None]:
    """:func:`.uncertainty.analyse`, then, for a family with a smoothed threshold whose
    maximum was located, the correction of its estimates by simulation (the bootstrap
    estimates [R, p] are the gate's own). Every fit that reports a family's parameters
    goes through here."""
    results, boot = analyse(ev, best, replicates=replicates, seed=seed)
    if not ev.family.smooth_gate or not results or not all(r.located for r in results):
        return results, boot, None
    assert ev.profile.best is not None
    estimate = ev.profile.best  # the best point evaluated, which analyse reports
    se_raw = [
        r.se / derivative(q, estimate.raw[i])
        for i, (q, r) in enumerate(zip(ev.family.params, results, strict=True))
    ]
    if not all(math.isfinite(v) and v > 0 for v in se_raw):
        return results, boot, None
    correction = gate_bias(ev, estimate, progress=progress, se_raw=se_raw)
    if correction is None:
        return results, boot, None
    return corrected(ev.family, estimate, results, correction, boot), boot, correction
