"""Where a fitting point's time goes (prints one JSON line).

A log of ``--users`` x ``--steps`` is generated from ``--family``'s ground truth
(uniformly random slates, exposures logged) and the family's whole-log marginal likelihood
is evaluated at its true parameters (untimed: it warm-starts the rest), then at
``--points`` nearby points under cProfile. Prints the cumulative seconds of the parts:
the users' initial-preference fits (``fit_u0``), the importance-sampled marginal
(``user_terms``), within it the expected information, and the family's state update
(``step``, called once per event step by both), with their shares of the total, and the
evaluations each initial-preference fit took (each evaluates the users still being
fitted; ``fit_u0`` stops at 100). Shares hold on a loaded machine; seconds do not.

With ``--selection``, one candidate's whole selection fit instead (what ``fit_log`` runs
per candidate: ``select.score_candidate`` on the training users, at most
``--fit-users`` of them, then the held-out users scored): a log generated from
``--data``'s ground truth (default T-RECS, what ``bench/fit.py`` fits) and split as
``fit_log`` splits it, the seconds of the coarse grid's rough points (on
``fit.ROUGH_USERS`` users, each point's Laplace value from the exact observed
information) apart from the full points', and the same parts as above.

    python bench/fit_profile.py --family trecs --users 2000 --points 4
    python bench/fit_profile.py --selection --family bounded_confidence --fit-users 1600
"""

from __future__ import annotations

import argparse
import cProfile
import json
import platform
import pstats
import sys
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from simulator.threads import configure_process  # noqa: E402

configure_process()  # before torch loads OpenMP: idle threads sleep instead of spinning

import torch  # noqa: E402

from recommenders.baselines import UniformRandom  # noqa: E402
from simulator.fitting import fit  # noqa: E402
from simulator.fitting.families import FAMILIES, Family, family_of_spec  # noqa: E402
from simulator.fitting.fit import Evaluator, theta_to_raw  # noqa: E402
from simulator.fitting.recovery import TRUTH, recovery_spec, simulate_log  # noqa: E402
from simulator.fitting.select import SELECTION_USERS, make_split, score_candidate  # noqa: E402

#: the parts reported (cumulative time, recursion counted once)
PARTS = {
    "fit_u0": fit.fit_u0,
    "user_terms": fit.user_terms,
    "expected_information": fit._expected_information,
    "observed_information": fit._observed_information,
    "family_step": Family.step,
}

#: the timed points' offsets from the truth on the unconstrained scale (a search's
#: neighbours: each warm-starts from the nearest point evaluated)
OFFSETS = (0.05, 0.0167, -0.02, 0.03, -0.04, 0.01)


def _parts(stats: dict, total: float, skip: tuple[str, ...] = ()) -> dict[str, dict]:
    """Each part's cumulative seconds and share of ``total`` in cProfile's ``stats``."""
    out = {}
    for name, func in PARTS.items():
        if name not in skip:
            seconds = stats.get(_key(func), (0, 0, 0.0, 0.0))[3]
            out[name] = {"seconds": round(seconds, 2), "share": round(seconds / total, 3)}
    return out


def _key(func) -> tuple[str, int, str]:
    """A function's key in cProfile's statistics."""
    code = func.__code__
    return code.co_filename, code.co_firstlineno, code.co_name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", default="trecs", choices=sorted(TRUTH))
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--dim", type=int, default=6)
    ap.add_argument("--points", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument(
        "--selection", action="store_true", help="one candidate's selection fit (see above)"
    )
    ap.add_argument("--data", default="trecs", choices=sorted(TRUTH), help="with --selection")
    ap.add_argument(
        "--fit-users",
        type=int,
        default=SELECTION_USERS,
        help=f"with --selection: training users fitted on (default {SELECTION_USERS})",
    )
    args = ap.parse_args()
    if min(args.users, args.steps, args.dim, args.threads, args.fit_users) < 1:
        ap.error("--users, --steps, --dim, --threads and --fit-users must be positive")
    if args.selection:
        torch.set_num_threads(args.threads)
        print(json.dumps(selection_profile(args)))
        return
    if not 1 <= args.points <= len(OFFSETS):
        ap.error(f"--points must be 1 to {len(OFFSETS)}")
    torch.set_num_threads(args.threads)
    family = FAMILIES[args.family]
    if not family.params:
        ap.error(f"{args.family} has no parameters to evaluate points of")
    spec = recovery_spec(args.family, args.dim)
    log, items, choice = simulate_log(spec, UniformRandom(), args.users, args.steps, seed=0)
    ev = Evaluator(family, log, items, choice, seed=0)
    truth = theta_to_raw(family, family_of_spec(spec.dynamics)[1])
    ev(truth)
    offsets = OFFSETS[: args.points]
    profile = cProfile.Profile()
    start = time.perf_counter()
    profile.enable()
    for off in offsets:
        ev(tuple(r + off for r in truth))
    profile.disable()
    total = time.perf_counter() - start
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    # only the rough points' Laplace values use the observed information: none here
    parts = _parts(stats, total, skip=("observed_information",))
    # the objective's evaluations per initial-preference fit (its cap is fit_u0's
    # max_evals)
    objective = next(
        c for c in fit.fit_u0.__code__.co_consts if getattr(c, "co_name", "") == "objective"
    )
    evals = stats.get((objective.co_filename, objective.co_firstlineno, "objective"), (0, 0))[1]
    fits = stats.get(_key(fit.fit_u0), (0, 0))[1]
    print(
        json.dumps(
            {
                "benchmark": "fit_profile",
                "family": args.family,
                "users": args.users,
                "steps": args.steps,
                "points": len(offsets),
                "seconds": round(total, 2),
                "parts": parts,
                "initial_preference_fits": fits,
                "evaluations_per_fit": round(evals / fits, 1) if fits else None,
                "threads": args.threads,
                "python": platform.python_version(),
                "torch": torch.__version__,
            }
        )
    )


def selection_profile(args: argparse.Namespace) -> dict:
    """``--selection``: the seconds of one candidate's selection fit and of its parts."""
    family = FAMILIES[args.family]
    spec = recovery_spec(args.data, args.dim)
    log, items, choice = simulate_log(spec, UniformRandom(), args.users, args.steps, seed=0)
    split = make_split(log, 0, max_fit=args.fit_users)
    phases: dict[str, list[float]] = {}  # rough / full / held-out: [calls, points, seconds]
    evaluate = Evaluator._evaluate
    fitted_on = int(split.fit_users.sum())
    fitting: list[Evaluator] = []  # the first evaluator is the fit's, the next the held-out

    def timed(ev: Evaluator, keys: list[tuple[float, ...]], rough: bool = False) -> None:
        begin = time.perf_counter()
        evaluate(ev, keys, rough)
        fitting[:] = fitting or [ev]
        phase = "rough" if rough else ("full" if ev is fitting[0] else "held_out")
        acc = phases.setdefault(phase, [0, 0, 0.0])
        acc[0] += 1
        acc[1] += len(keys)
        acc[2] += time.perf_counter() - begin

    Evaluator._evaluate = timed  # type: ignore[method-assign,assignment]
    profile = cProfile.Profile()
    start = time.perf_counter()
    profile.enable()
    try:
        score = score_candidate(family, log, items, choice, split, 0)
    finally:
        profile.disable()
        Evaluator._evaluate = evaluate  # type: ignore[method-assign]
    total = time.perf_counter() - start
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    parts = _parts(stats, total)
    return {
        "benchmark": "fit_profile_selection",
        "family": args.family,
        "data": args.data,
        "users": args.users,
        "steps": args.steps,
        "fit_users": fitted_on,
        "rough_users": min(fit.ROUGH_USERS, fitted_on),
        "seconds": round(total, 2),
        "phases": {
            k: {"calls": int(v[0]), "points": int(v[1]), "seconds": round(v[2], 2)}
            for k, v in phases.items()
        },
        "parts": parts,
        "estimate": score.theta,
        "threads": args.threads,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


if __name__ == "__main__":
    main()
