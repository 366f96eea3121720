"""Family selection by held-out likelihood, and the whole fit of a log.

Split: a share of users is held out entirely; every user's events are cut at the same
share of their history (the first 70% by default are "early", the rest "later"). Each
candidate's parameters are fitted on the training users' early events; every user's
initial preferences are then fitted on their early events with those parameters fixed,
and the later events are predicted. The score is the log-likelihood per later event,
against the static baseline (paired per user, bootstrap over users for the interval).
The family with the best score is selected if its gain over static has a 95% interval
above 0; otherwise static is (parsimony: a drift the data cannot tell from no drift is
not claimed).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from .families import DEFAULT_CANDIDATES, FAMILIES, Family
from .fit import Evaluator, fit_u0, initial_u0, maximize, refit, user_terms
from .likelihood import ChoiceForm, Items
from .log import EventLog
from .report import CandidateFit, FitSection, ParameterFit
from .uncertainty import NOT, analyse, bootstrap_ratio

SELECTION_RULE = (
    "the candidate with the highest held-out log-likelihood per event is selected when the "
    "95% bootstrap interval of its gain over static lies above 0; otherwise static"
)
METHOD = (
    "maximum of the Laplace-adjusted profile likelihood (each user's initial preferences "
    "profiled out, minus half the log-determinant of their information; Cox and Reid 1987), "
    "derivative-free search on the unconstrained scale; MNL choice over the shown items "
    "plus the outside option, state carried through each user's events by the family's update"
)


@dataclass(frozen=True)
class Split:
    train_users: torch.Tensor  # [U] bool
    early: torch.Tensor  # [U, T] bool
    later: torch.Tensor  # [U, T] bool


def make_split(log: EventLog, seed: int, holdout_users: float = 0.2, later: float = 0.3) -> Split:
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(log.users, generator=gen)
    n_hold = round(holdout_users * log.users)
    train = torch.ones(log.users, dtype=torch.bool)
    train[perm[:n_hold]] = False
    lengths = log.lengths()
    cut = torch.ceil(lengths.double() * (1 - later)).long().clamp_max(lengths)
    pos = torch.arange(log.mask.shape[1])[None, :]
    early = (pos < cut[:, None]) & log.mask
    return Split(train, early, log.mask & ~early)


@dataclass
class CandidateScore:
    family: Family
    theta: dict[str, float]
    later_u: np.ndarray  # [U] summed log-likelihood of later events


def score_candidate(
    family: Family, log: EventLog, items: Items, choice: ChoiceForm, split: Split, seed: int
) -> CandidateScore:
    weight = split.early & split.train_users[:, None]
    ev = Evaluator(family, log, items, choice, weight=weight, seed=seed)
    best = maximize(ev)
    start = torch.where(split.train_users[:, None], best.u0, initial_u0(log, items, seed))
    u0 = fit_u0(family, best.theta, log, items, choice, split.early, start)
    later, _ = user_terms(
        family, best.theta, log, items, choice, split.later, u0, information=False
    )
    return CandidateScore(family, best.theta, later.numpy())


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
) -> tuple[FitSection, dict]:
    """Select a family, fit it on the whole log, and report it. Returns the section and
    internals (the candidates' scores, the bootstrap estimates) for validation."""
    start_time = time.perf_counter()
    names = ("static", *[c for c in candidates if c != "static"])
    split = make_split(log, seed)
    n_later = split.later.sum(dim=1).numpy().astype(float)
    scores: dict[str, CandidateScore] = {}
    for name in names:
        if progress:
            progress(f"selection: fitting {name}")
        scores[name] = score_candidate(FAMILIES[name], log, items, choice, split, seed)
    base = scores["static"].later_u
    train = split.train_users.numpy()
    rows = []
    gains: dict[str, tuple[float, float, float]] = {}
    for i, name in enumerate(names):
        s = scores[name]
        gain = bootstrap_ratio(s.later_u - base, n_later, replicates, seed + 1 + i)
        gains[name] = gain
        held = n_later[~train].sum()
        rows.append(
            CandidateFit(
                family=name,
                parameters=s.theta,
                heldout_loglik_per_event=float(s.later_u.sum() / max(n_later.sum(), 1)),
                later_loglik_per_event=float(s.later_u[train].sum() / max(n_later[train].sum(), 1)),
                heldout_users_loglik_per_event=float(s.later_u[~train].sum() / held)
                if held
                else None,
                vs_static=gain[0],
                vs_static_interval=(gain[1], gain[2]),
            )
        )
    best_name = max(names, key=lambda n: gains[n][0])
    selected = best_name if best_name != "static" and gains[best_name][1] > 0 else "static"
    family = FAMILIES[selected]
    if progress:
        progress(f"fitting {selected} on the whole log")
    ev = Evaluator(family, log, items, choice, seed=seed)
    best = refit(ev, scores[selected].theta) if family.params else ev(())
    results, boot = analyse(ev, best, replicates=replicates, seed=seed)
    params = []
    for r in results:
        shown = r.status != NOT
        params.append(
            ParameterFit(
                name=r.name,
                status=r.status,
                estimate=r.estimate if shown else None,
                interval=r.interval,
                relative_se=r.relative_se if math.isfinite(r.relative_se) else None,
                note=""
                if shown
                else "the data do not pin this parameter down; the interval is what they do not rule out",
            )
        )
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
            "split": {"holdout_users": 0.2, "later_events": 0.3, "seed": seed},
            "bootstrap_replicates": replicates,
            **(data or {}),
        },
        assumptions=(
            "initial preferences: one unit vector per user, fitted (profiled out) jointly",
            "only consumed items move preferences (exposure weight 0, click weight 1)",
            "natural drift: its mean reversion is the anchored family's lam (the same map on "
            "the sphere); its random walk is not identifiable with a deterministic state and "
            "is not fitted",
            *assumptions,
            *(
                (
                    "the scenario's dynamics need a number for every parameter: for those not "
                    "identified (" + ", ".join(r.name for r in results if r.status == NOT) + ") "
                    "it uses the profile maximum, which the data do not pin down",
                )
                if any(r.status == NOT for r in results)
                else ()
            ),
        ),
        seconds=round(time.perf_counter() - start_time, 2),
    )
    internals = {"scores": scores, "boot": boot, "best": best, "results": results, "gains": gains}
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
    estimates, and their relative change from the section's."""
    family = FAMILIES[section.family]
    ev = Evaluator(family, log, items, choice, seed=seed)
    best = maximize(ev)
    base = {p.name: p.estimate for p in section.parameters}
    change: dict[str, float | None] = {}
    for k, v in best.theta.items():
        b = base.get(k)
        change[k] = abs(v - b) / abs(b) if b else None
    return {
        "proxy": proxy,
        "exposures": log.exposures,
        "estimates": best.theta,
        "relative_change": change,
    }
