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
scale. The correction's own sampling noise (each simulated fit is as noisy as the fit
itself) widens the interval: its half-widths are multiplied by ``sqrt(1 + 1/sims)``.
Where a simulated fit's maximum is not located, the correction starts again with other
seeds, up to :data:`ATTEMPTS` times; only then is the gate's estimate reported
uncorrected, and said to be (a validation repetition reported one so, silently, with its
gate's known bias: docs/results.md).

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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from .families import FAMILIES, Family
from .fit import Evaluator, Point, posterior_u0, raw_to_theta, refit, theta_tensors
from .likelihood import ChoiceForm, Items, prepared
from .log import EventLog
from .uncertainty import ParamResult, analyse, status_of

#: simulated logs the bias is averaged over, at each step
SIMS = 1
#: steps toward the parameters whose simulated fits the gate's estimate is the mean of
STEPS = 2
#: times the correction is tried, each with new seeds, when a simulated fit's maximum
#: is not located
ATTEMPTS = 2


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
    #: the attempt (1 to :data:`ATTEMPTS`) whose simulated fits were all located
    attempt: int = 1


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
    sim_ev = Evaluator(fam, sim_log, ev.items, ev.choice, seed=seed + s, pool=ev.pool)
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
    attempts: int = ATTEMPTS,
) -> Correction | None:
    """The gate's bias where it matters, at the corrected estimate: first at ``best``
    (the gate's estimate), then at ``best`` less that bias, ``steps`` times in all (the
    fixed point of indirect inference, reached in a step or two: the bias moves with the
    parameters, and at the gate's estimate it under-corrected ``mu`` by a third). Each
    step simulates ``sims`` logs with the same seeds (common random numbers) and takes the
    mean shift of their fits. Where a simulated fit's maximum is not located, all of it
    again with the next ``sims`` seeds, ``attempts`` times in all; None when none
    succeeded. ``progress`` hears of each simulated fit."""
    for attempt in range(attempts):
        got = _gate_bias_once(ev, best, sims, steps, attempt, progress)
        if got is not None:
            return got
    return None


def _gate_bias_once(
    ev: Evaluator,
    best: Point,
    sims: int,
    steps: int,
    attempt: int,
    progress: Callable[[str], None] | None,
) -> Correction | None:
    """One attempt of :func:`gate_bias`, with the simulation seeds ``attempt * sims + 1``
    to ``attempt * sims + sims`` (the first attempt's are 1 to ``sims``)."""
    at = best.raw
    bias = tuple(0.0 for _ in at)
    done: list[dict[str, Any]] = []
    hard = replace(ev.family, smooth_gate=False)
    seeds = range(attempt * sims + 1, attempt * sims + sims + 1)
    again = f", attempt {attempt + 1}, with other seeds" if attempt else ""
    for step in range(steps):
        # each simulated log's users start from a draw of their posterior under the hard
        # threshold simulated from, at the parameters simulated at, around the gate's
        # modes; the same seed at every step (common random numbers)
        here = replace(best, raw=at, theta=raw_to_theta(ev.family, at))
        shifts, fitted = [], []
        for i, s in enumerate(seeds):
            if progress:
                progress(
                    f"correcting {ev.family.name}'s threshold-gate bias by simulation "
                    f"({step * sims + i + 1} of {steps * sims}{again})"
                )
            u0 = posterior_u0(ev, here, ev.seed + 104729 * s, family=hard)
            got = _simulated_fit(ev, best, at, s, u0)
            if got is None:
                return None
            shifts.append(np.subtract(got.raw, at))
            fitted.append(got.theta)
        bias = tuple(float(b) for b in np.mean(shifts, axis=0))
        done.append({"at": raw_to_theta(ev.family, at), "fitted": fitted})
        at = tuple(r - b for r, b in zip(best.raw, bias, strict=True))
    return Correction(bias, tuple(done), sims, attempt + 1)


def corrected(
    family: Family, best: Point, results: list[ParamResult], correction: Correction
) -> list[ParamResult]:
    """Each parameter's estimate with the bias subtracted and its interval moved with it
    and widened for the correction's noise, both on the unconstrained scale (so that they
    stay in the parameter's range); its standard error widened alike, and its
    identifiability judged again on that."""
    widen = math.sqrt(1.0 + 1.0 / correction.sims)
    out = []
    for i, (q, r) in enumerate(zip(family.params, results, strict=True)):
        raw = best.raw[i]
        centre = raw - correction.raw_bias[i]
        lo, hi = (float(q.to_raw(v)) for v in r.interval)
        lo = centre - max(0.0, raw - lo) * widen
        hi = centre + max(0.0, hi - raw) * widen
        new, lo, hi = (float(q.to_value(torch.tensor(v))) for v in (centre, lo, hi))
        se = r.se * widen
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
            )
        )
    return out


def corrects(names: Iterable[str]) -> int:
    """Fits the correction may add to one fit of these candidates at most (``STEPS`` x
    ``SIMS`` x ``ATTEMPTS`` where a family with a smoothed threshold is among them and so
    may be selected; each about one family's fit): for budgets."""
    gated = any(FAMILIES[n].smooth_gate for n in names if n in FAMILIES)
    return STEPS * SIMS * ATTEMPTS if gated else 0


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
    goes through here. The correction is None where the family has no gate, and where it
    has one whose estimates stay uncorrected (:func:`uncorrected_gate` says so)."""
    results, boot = analyse(ev, best, replicates=replicates, seed=seed)
    if not ev.family.smooth_gate or not results or not all(r.located for r in results):
        return results, boot, None
    assert ev.profile.best is not None
    estimate = ev.profile.best  # the best point evaluated, which analyse reports
    correction = gate_bias(ev, estimate, progress=progress)
    if correction is None:
        return results, boot, None
    return corrected(ev.family, estimate, results, correction), boot, correction


def uncorrected_gate(family: Family, correction: Correction | None) -> bool:
    """A family with a smoothed threshold whose estimates were not corrected (its
    maximum, or a simulated refit's in every attempt, was not located): they are the
    gate's own, with its bias."""
    return family.smooth_gate and correction is None
