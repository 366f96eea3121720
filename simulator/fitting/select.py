"""Family selection by held-out likelihood, and the whole fit of a log.

Split: a share of users (20% by default) is held out entirely. Each candidate's
parameters are fitted on the training users' whole histories. Each held-out user's whole
history (their early and later interactions) is then scored by its marginal likelihood
with the parameters fixed and their initial preferences integrated out over the sphere
(importance-sampled, :func:`.fit.user_terms`; each held-out user's draws are the same for
every family).

Every family thus gets the same information about a held-out user: all their choices,
with their taste integrated out. Scoring later events one step ahead after fitting
``u0`` on early events would not: a drift family moves its state toward the later
choices and so corrects the noisy early estimate of ``u0``, which static cannot, and
static data then select drift.

The score is the held-out log-likelihood per event, reported against the static baseline
(paired per user, bootstrap over held-out users for the interval). The family with the
best score is selected unless a family with fewer parameters is not significantly worse
(the 95% interval of its deficit reaches down to a negligible gain), in which case the
simplest such is (parsimony: a drift the data cannot tell from no drift, or an anchor they
cannot tell from none, is not claimed).
"""

from __future__ import annotations

import math
import multiprocessing
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np
import torch

from . import fit as _fit
from .debias import ATTEMPTS, analyse_fit, uncorrected_gate
from .families import DEFAULT_CANDIDATES, FAMILIES, Family
from .fit import Evaluator, maximize, raw_to_theta, refit
from .likelihood import ChoiceForm, Items
from .log import EventLog
from .report import CandidateFit, FitSection, ParameterFit
from .uncertainty import NOT, ParamResult, bootstrap_ratio

#: the most training users the candidates are fitted on during the selection (a seeded
#: subsample of a larger log's training users; the selected family is then refitted on
#: every user, and every held-out user is scored)
SELECTION_USERS = 600

#: the smallest held-out gain per event that counts (nats): a candidate whose deficit
#: against the best is not significantly above this is as good as the best. Drift that
#: moves choices is worth 0.06-0.25 nats per event on the validation logs; on static logs
#: drift families nesting static scored within 0.0003 of it, and a consistent gain of
#: 3e-8 per event was "significant" over 400 held-out users (docs/results.md)
NEGLIGIBLE_GAIN = 1e-3


SELECTION_RULE = (
    f"parameters fitted on 80% of users (at most {SELECTION_USERS:,} of them, a seeded "
    "subsample; the selected family is then refitted on every user); each held-out user's whole history scored by its "
    "marginal likelihood (initial preferences integrated out, same for every family); "
    "the candidate with the highest held-out log-likelihood per event "
    "is selected unless a candidate with fewer parameters is not significantly worse (the "
    "95% bootstrap interval over held-out users of its deficit per event reaches down to "
    f"{NEGLIGIBLE_GAIN} nats, a gain smaller than that counting as none), in which "
    "case the simplest such is (never one scoring below a candidate with no more "
    "parameters that is significantly worse); static is the simplest"
)
METHOD = (
    "maximum of the marginal likelihood (each user's initial preferences integrated out "
    "over a flat prior on the sphere, by importance sampling around their mode), "
    "derivative-free search on the unconstrained scale; MNL choice over the shown items "
    "plus the outside option, state carried through each user's events by the family's update"
)


@dataclass(frozen=True)
class Split:
    train_users: torch.Tensor  # [U] bool; the others are held out
    fit_users: torch.Tensor  # [U] bool; the training users the candidates are fitted on


def make_split(
    log: EventLog, seed: int, holdout_users: float = 0.2, max_fit: int = SELECTION_USERS
) -> Split:
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(log.users, generator=gen)
    n_hold = max(1, round(holdout_users * log.users)) if log.users > 1 else 0
    train = torch.ones(log.users, dtype=torch.bool)
    train[perm[:n_hold]] = False
    fit = train.clone()
    fit[perm[n_hold + max_fit :]] = False
    return Split(train, fit)


@dataclass
class CandidateScore:
    family: Family
    theta: dict[str, float]
    heldout_u: np.ndarray  # [H] held-out users' marginal log-likelihood
    #: the warm start of the whole-log fit: [U, d] the users' initial preferences at the
    #: estimate, for the users it was fitted on and those scored (rows of NaN: the
    #: others), and the users it was fitted on [F] with their inverse-Hessian
    #: approximations [F, d, d] (at most SELECTION_USERS of them: d x d per user of a
    #: large log would cost more memory than the fit's budget counts)
    start: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None


def score_candidate(
    family: Family, log: EventLog, items: Items, choice: ChoiceForm, split: Split, seed: int
) -> CandidateScore:
    train = torch.nonzero(split.fit_users)[:, 0]
    hold = torch.nonzero(~split.train_users)[:, 0]
    if len(hold) == 0:  # a single user: nothing to hold out, scored in sample
        hold = train
    ev = Evaluator(family, log.subset(train), items, choice, seed=seed)
    best = maximize(ev)
    # each held-out user's marginal likelihood of their whole history at the training
    # estimate
    held = Evaluator(family, log.subset(hold), items, choice, seed=seed)(best.raw)
    d = best.u0.shape[1]
    u0 = torch.full((log.users, d), math.nan, dtype=best.u0.dtype)
    u0[hold], u0[train] = held.u0, best.u0
    curvature = best.curvature
    if curvature is None:  # none kept: none known
        curvature = torch.full((len(train), d, d), math.nan, dtype=torch.float64)
    start = (u0.numpy(), train.numpy(), curvature.numpy())
    return CandidateScore(family, best.theta, held.marginal_u.numpy(), start)


def _score_by_name(
    name: str, log: EventLog, items: Items, choice: ChoiceForm, split: Split, seed: int
) -> tuple[dict[str, float], np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray] | None]:
    """:func:`score_candidate` in a worker process (a family's update may be a closure,
    so the family travels by name both ways)."""
    score = score_candidate(FAMILIES[name], log, items, choice, split, seed)
    return score.theta, score.heldout_u, score.start


def _one_thread() -> None:
    torch.set_num_threads(1)


def score_candidates(
    names: tuple[str, ...],
    log: EventLog,
    items: Items,
    choice: ChoiceForm,
    split: Split,
    seed: int,
    pool: ProcessPoolExecutor | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, CandidateScore]:
    """Every candidate's held-out score. With a ``pool`` (:func:`fit_pool`) the
    candidates are fitted in its processes, those with the most parameters first; each
    candidate's fit is the same computation wherever it runs, so the scores do not depend
    on the pool."""
    if pool is None or len(names) <= 2:
        scores = {}
        for name in names:
            if progress:
                progress(f"selection: fitting {name}")
            scores[name] = score_candidate(FAMILIES[name], log, items, choice, split, seed)
        return scores
    plain = replace(log)  # without the likelihood's cached tensors
    order = sorted(names, key=lambda n: -len(FAMILIES[n].params))
    futures = {
        pool.submit(_score_by_name, name, plain, items, choice, split, seed): name for name in order
    }
    if progress:
        progress(f"selection: fitting {', '.join(order)} in parallel")
    done = {}
    for future in as_completed(futures):
        name = futures[future]
        done[name] = CandidateScore(FAMILIES[name], *future.result())
        if progress:
            progress(f"selection: fitted {name}")
    return {name: done[name] for name in names}


@contextmanager
def fit_pool(workers: int) -> Iterator[ProcessPoolExecutor | None]:
    """``workers`` processes (one torch thread each) for one fit, or None for one: they
    fit the candidates during the selection, and then take half of each of the whole-log
    fit's evaluations (:func:`.fit.fit_rows`)."""
    if workers <= 1:
        yield None
        return
    ctx = multiprocessing.get_context("spawn")  # torch's threads do not survive a fork
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_one_thread)
    try:
        yield pool
    except BaseException:  # an error or an interrupt: drop the queued work, do not wait
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()


def select(
    names: tuple[str, ...],
    scores: dict[str, CandidateScore],
    n_held: np.ndarray,
    replicates: int,
    seed: int,
    vs_static: dict[str, tuple[float, float, float]] | None = None,
) -> str:
    """Parsimony among the candidates: the one with the best held-out score, unless a
    candidate with fewer parameters is not significantly worse (the 95% bootstrap
    interval of its deficit per event reaches down to :data:`NEGLIGIBLE_GAIN`); then the
    simplest such (by score among equally simple ones). Static is the simplest of all.

    A candidate scoring below one at least as simple that is significantly worse than
    the best is ruled out with it: a noisy candidate's wide interval must not let it
    through where a better, simpler one was stopped. (A simpler candidate keeps its own
    judgement: parsimony gives it the benefit of the doubt.) ``vs_static``: the reported intervals of each candidate's gain over
    static; static's deficit is judged by the best's reported interval, so that the
    decision can never contradict what the report shows."""
    total = {n: float(scores[n].heldout_u.sum()) for n in names}
    best = max(names, key=total.__getitem__)
    eligible: list[str] = []
    ruled_out: list[str] = []
    for i, name in enumerate(names):
        if name == best:
            eligible.append(name)
            continue
        if name == "static" and vs_static is not None:
            low = vs_static[best][1]
        else:
            diff = scores[best].heldout_u - scores[name].heldout_u
            _, low, _ = bootstrap_ratio(diff, n_held, replicates, seed + 101 + i)
        (eligible if low <= NEGLIGIBLE_GAIN else ruled_out).append(name)
    size = {n: len(FAMILIES[n].params) for n in names}
    eligible = [
        n for n in eligible if all(total[n] >= total[m] for m in ruled_out if size[m] <= size[n])
    ]
    return min(eligible, key=lambda n: (size[n], -total[n]))


def fit_assumptions(
    family: Family, results: list[ParamResult], extra: tuple[str, ...] = ()
) -> tuple[str, ...]:
    """What a fit of ``family`` assumes, said in its section (and so in every report)."""
    not_identified = [r.name for r in results if r.status == NOT]
    return (
        "initial preferences: one unit vector per user, integrated out over a flat prior "
        "on the sphere (importance-sampled around each user's best fit)",
        "only consumed items move preferences (exposure weight 0, click weight 1)",
        "natural drift: its mean reversion is the anchored family's lam (the same map on "
        "the sphere); its random walk is not identifiable with a deterministic state and "
        "is not fitted",
        *extra,
        *((_gate_assumption(results),) if family.smooth_gate else ()),
        *(
            (
                "the scenario's dynamics need a number for every parameter: for those not "
                "identified (" + ", ".join(not_identified) + ") it uses the profile maximum, "
                "which the data do not pin down",
            )
            if not_identified
            else ()
        ),
    )


def _gate_assumption(results: list[ParamResult]) -> str:
    said = (
        f"the confidence threshold is fitted as a logistic gate {_fit.SMOOTH} rad wide, where "
        "the simulator's is a hard one; on logs simulated with a hard threshold the gate's "
        "estimates came out a few percent off (epsilon low, mu high), further than their "
        "intervals reach (docs/results.md)"
    )
    if any(r.uncorrected is not None for r in results):
        return (
            f"{said}: that bias is estimated by fitting the gate again to choices simulated "
            "from the hard threshold (the log's slates, each user's fitted initial "
            "preferences), first at the estimate and then at the estimate less that bias, "
            "and subtracted; the intervals are widened for the correction's own noise "
            "(docs/science.md)"
        )
    return (
        f"{said}; no correction was made (the maximum of this fit, or of a refit to "
        f"simulated choices in each of {ATTEMPTS} attempts with other seeds, was not "
        "located): the estimates and intervals are the gate's, with its bias"
    )


def fit_log(
    log: EventLog,
    items: Items,
    choice: ChoiceForm,
    *,
    candidates: tuple[str, ...] = DEFAULT_CANDIDATES,
    seed: int = 0,
    replicates: int = 200,
    assumptions: tuple[str, ...] = (),
    data: dict | None = None,
    progress=None,
    workers: int = 1,
) -> tuple[FitSection, dict]:
    """Select a family, fit it on the whole log, and report it. Returns the section and
    internals (the candidates' scores, the bootstrap estimates) for validation.
    ``workers``: processes the candidates are fitted in, which then share the whole-log
    fit's evaluations (:func:`fit_pool`); the numbers do not depend on it (the whole-log
    fit's to float64 rounding)."""
    with fit_pool(workers) as pool:
        return _fit_log(
            log, items, choice, candidates, seed, replicates, assumptions, data, progress, pool
        )


def _fit_log(
    log: EventLog,
    items: Items,
    choice: ChoiceForm,
    candidates: tuple[str, ...],
    seed: int,
    replicates: int,
    assumptions: tuple[str, ...],
    data: dict | None,
    progress: Callable[[str], None] | None,
    pool: ProcessPoolExecutor | None,
) -> tuple[FitSection, dict]:
    """:func:`fit_log` with its pool."""
    start_time = time.perf_counter()
    names = ("static", *[c for c in candidates if c != "static"])
    split = make_split(log, seed)
    held_users = ~split.train_users if bool((~split.train_users).any()) else split.train_users
    n_held = log.lengths()[held_users].numpy().astype(float)
    scores = score_candidates(names, log, items, choice, split, seed, pool, progress)
    base = scores["static"].heldout_u
    rows = []
    gains: dict[str, tuple[float, float, float]] = {}
    for i, name in enumerate(names):
        s = scores[name]
        gain = bootstrap_ratio(s.heldout_u - base, n_held, replicates, seed + 1 + i)
        gains[name] = gain
        per_event = float(s.heldout_u.sum() / max(n_held.sum(), 1))
        rows.append(
            CandidateFit(
                family=name,
                parameters=s.theta,
                heldout_loglik_per_event=per_event,
                heldout_users_loglik_per_event=per_event,
                vs_static=gain[0],
                vs_static_interval=(gain[1], gain[2]),
            )
        )
    selected = select(names, scores, n_held, replicates, seed, vs_static=gains)
    family = FAMILIES[selected]
    if progress:
        progress(f"fitting {selected} on the whole log")
    # warm-started where the selection fitted or scored a user at the selected estimate
    warm = scores[selected].start if family.params else None
    u0 = curvature = None
    if warm is not None:
        u0 = torch.from_numpy(warm[0])
        curvature = torch.full((log.users, *warm[2].shape[1:]), math.nan, dtype=torch.float64)
        curvature[torch.from_numpy(warm[1])] = torch.from_numpy(warm[2])
    ev = Evaluator(family, log, items, choice, seed=seed, pool=pool, u0=u0, curvature=curvature)
    best = refit(ev, scores[selected].theta) if family.params else ev(())
    results, boot, correction = analyse_fit(ev, best, replicates, seed, progress)
    params = _parameter_rows(results, uncorrected_gate(family, correction))
    theta = {r.name: r.estimate for r in results}
    section = FitSection(
        family=selected,
        dynamics=family.to_spec(theta).model_dump(mode="json"),
        parameters=tuple(params),
        vs_static=gains[selected][0],
        vs_static_interval=(gains[selected][1], gains[selected][2]),
        candidates=tuple(rows),
        selection_rule=SELECTION_RULE,
        method=METHOD,
        data={
            "users": log.users,
            "events": log.events,
            "exposures": log.exposures,
            "outside_option": log.outside_option,
            "choice": {
                "temperature": choice.temperature,
                "no_click_utility": choice.no_click_utility,
                "position_bias": choice.position_bias,
            },
            "split": {
                "holdout_users": 0.2,
                "seed": seed,
                "selection_fit_users": int(split.fit_users.sum()),
            },
            "bootstrap_replicates": replicates,
            **(data or {}),
            **(
                {
                    "gate_correction": {
                        "simulated_logs": correction.sims,
                        "attempt": correction.attempt,
                        "steps": list(correction.steps),
                        "bias_unconstrained": list(correction.raw_bias),
                    }
                }
                if correction is not None
                else {}
            ),
        },
        assumptions=fit_assumptions(family, results, assumptions),
        seconds=round(time.perf_counter() - start_time, 2),
    )
    internals = {
        "scores": scores,
        "boot": boot,
        "best": best,
        "results": results,
        "gains": gains,
        "correction": correction,
    }
    return section, internals


def proxy_sensitivity(
    section: FitSection,
    log: EventLog,
    items: Items,
    choice: ChoiceForm,
    proxy: str,
    seed: int = 0,
) -> dict:
    """Refit the selected family on the same log under another exposure proxy: the
    estimates, and their relative change from the section's (a section whose estimates
    were corrected for the threshold gate's bias has the same correction applied)."""
    family = FAMILIES[section.family]
    ev = Evaluator(family, log, items, choice, seed=seed)
    best = maximize(ev)
    estimates = best.theta
    gate = section.data.get("gate_correction")
    if gate:  # the section's estimates are corrected: the same shift, to compare alike
        bias = [float(b) for b in gate["bias_unconstrained"]]
        if len(bias) != len(best.raw):
            raise ValueError(f"the section's gate correction has {len(bias)} values")
        raw = np.subtract(best.raw, bias)
        estimates = raw_to_theta(family, tuple(float(r) for r in raw))
    base = {p.name: p.estimate for p in section.parameters}
    change: dict[str, float | None] = {}
    for k, v in estimates.items():
        b = base.get(k)
        change[k] = abs(v - b) / abs(b) if b else None
    return {
        "proxy": proxy,
        "exposures": log.exposures,
        "estimates": estimates,
        "relative_change": change,
    }


def with_proxy_notes(section: FitSection, sensitivity: dict) -> FitSection:
    """The section with a note on each parameter whose estimate under the other exposure
    proxy (:func:`proxy_sensitivity`) lies outside its 95% interval: that estimate rests
    on the exposure assumption more than its interval says."""
    params = []
    for p in section.parameters:
        other = sensitivity["estimates"].get(p.name)
        if other is not None and p.interval is not None:
            lo, hi = p.interval
            if not lo <= other <= hi:
                said = (
                    f"depends on the exposure assumption: under the {sensitivity['proxy']} "
                    f"proxy it is {other:.3g}, outside this interval"
                )
                change = sensitivity.get("relative_change", {}).get(p.name)
                if change is not None:
                    said += f" (a {change:.0%} change)"
                p = p.model_copy(update={"note": f"{p.note}; {said}" if p.note else said})
        params.append(p)
    return section.model_copy(update={"parameters": tuple(params)})


def _parameter_rows(results: list[ParamResult], gate_bias: bool = False) -> list[ParameterFit]:
    """The section's parameter rows: a parameter not identified has no estimate, and no
    interval either when the likelihood's maximum was not located. ``gate_bias``: the
    estimates are a threshold gate's that were not corrected, which each shown row says."""
    params = []
    for r in results:
        shown = r.status != NOT
        if shown:
            if r.uncorrected is not None:
                note = (
                    f"corrected by simulation for the threshold gate's bias (the gate's own "
                    f"estimate: {r.uncorrected:.4g}); interval widened for the correction's "
                    "noise"
                )
            elif gate_bias:
                note = (
                    "not corrected for the threshold gate's bias (no simulated refit's "
                    "maximum was located): the gate's own estimate and interval, which on "
                    "simulated logs ran a few percent off (epsilon low, mu high) and may "
                    "miss the value"
                )
            else:
                note = ""
        elif r.located:
            note = (
                "the data do not pin this parameter down; the interval is what they do not rule out"
            )
        else:  # the bootstrap of a stencil the maximum lies outside says nothing
            note = (
                "the likelihood's maximum was not located (it keeps rising beyond the points "
                "evaluated, e.g. along a ridge of correlated parameters, or the best point "
                "stands far above its nearest neighbours): no estimate and no interval"
            )
        params.append(
            ParameterFit(
                name=r.name,
                status=r.status,
                estimate=r.estimate if shown else None,
                interval=r.interval if r.located else None,
                relative_se=r.relative_se if math.isfinite(r.relative_se) else None,
                note=note,
            )
        )
    return params
