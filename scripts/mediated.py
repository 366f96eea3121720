"""Mediated engagement by user type: how much of a policy's expected engagement the
shift it induced bought. Prints one JSON line.

    python scripts/mediated.py --scenario evans-polarization-v1 --policy oracle-greedy

For each policy, runs ``replicates`` replicates of the auditor's arm measurement
(``auditor.measure.run_arm``, with the natural counterfactual in lockstep) and reports,
per user type, expected clicks per user over the horizon under the actual preferences,
under the natural counterfactual's and under the initial ones; the mediated share
1 - natural / actual and the share against the initial preferences 1 - initial / actual,
each with a 95% interval over replicates (expanded bootstrap, ``auditor.stats``). Trained kinds
(``ppo``, ``ppo-myopic``, ...) are trained here with ``--iterations`` and ``--train-users``
(or taken from the trained-policy cache).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from auditor import stats
from auditor.audit import BuiltinPolicy
from auditor.measure import ArmJob, run_arm
from simulator.scenarios import get_scenario


def factory(kind: str, scenario, iterations: int, users: int) -> BuiltinPolicy:
    from recommenders.registry import get_kind

    if not get_kind(kind).trainable:
        return BuiltinPolicy(kind)
    from auditor import tracking
    from auditor.train import TrainJob, default_config, train_many
    from recommenders.rl.policy import PolicyBundle

    job = TrainJob(
        kind=kind,
        scenario=scenario,
        config=default_config(kind, iterations=iterations, users=users),
    )
    found = tracking.find_trained(job.fingerprint())  # the trained-policy cache
    if found is not None:
        bundle = PolicyBundle.load(found[1])
    else:
        ((outcome, _),) = train_many([job], ray_address=None)
        bundle = outcome.bundle
    return BuiltinPolicy(kind, dict(bundle.config), bytes(bundle.weights))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--scenario", default="evans-polarization-v1")
    p.add_argument(
        "--policy", action="append", help="policy kind (repeat); default oracle-greedy, myopic"
    )
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--replicates", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--iterations", type=int, default=30)
    p.add_argument("--train-users", type=int, default=4096)
    args = p.parse_args(argv)
    start = time.perf_counter()
    scenario = get_scenario(args.scenario)
    steps = args.steps or scenario.default_steps
    natural = BuiltinPolicy(scenario.natural_policy)
    out: dict[str, object] = {
        "scenario": scenario.id,
        "users": args.users,
        "steps": steps,
        "replicates": args.replicates,
    }
    for kind in args.policy or ["oracle-greedy", "myopic"]:
        f = factory(kind, scenario, args.iterations, args.train_users)
        per_type: dict[str, list[tuple[float, float]]] = {}
        for r in range(args.replicates):
            job = ArmJob(
                scenario,
                "policy",
                f,
                args.users,
                steps,
                args.seed + r,
                r,
                (0, steps),
                counterfactual=natural,
            )
            res = run_arm(job)
            assert res.mediation is not None
            types = res.types if res.types is not None else np.zeros(args.users, dtype=int)
            for t in ["all", *sorted(set(types.tolist()))]:
                rows = slice(None) if t == "all" else types == t
                act, nat, ini = (float(res.mediation[i][rows].mean()) for i in range(3))
                per_type.setdefault(str(t), []).append((act, nat, ini))
        figures = {}
        for t, vals in per_type.items():
            a = np.array(vals)
            share = 1.0 - a[:, 1] / a[:, 0]
            lo, hi = stats.bounds(share, 0.025, 4000, stats.stream(args.seed, "mediated", kind, t))
            initial = 1.0 - a[:, 2] / a[:, 0]
            lo_i, hi_i = stats.bounds(
                initial, 0.025, 4000, stats.stream(args.seed, "mediated-initial", kind, t)
            )
            figures[t] = {
                "clicks_actual": round(float(a[:, 0].mean()), 3),
                "clicks_natural": round(float(a[:, 1].mean()), 3),
                "clicks_initial": round(float(a[:, 2].mean()), 3),
                "share_vs_initial": round(float(initial.mean()), 4),
                "ci95_vs_initial": [round(lo_i, 4), round(hi_i, 4)],
                "mediated_share": round(float(share.mean()), 4),
                "ci95": [round(lo, 4), round(hi, 4)],
            }
        out[kind] = figures
    out["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
