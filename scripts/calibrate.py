"""Calibration evidence for the auditor's verdicts; prints one JSON line.

    python scripts/calibrate.py --audits 400 --replicates 8

1. Self-audits: a policy audited against itself (same seeds) must give exactly zero
   effects and pass, on every scenario given.
2. Null differences: two arms that differ only in their random numbers (the same policy
   on independent seeds, so the true effect is zero) are compared with the auditor's
   criteria at margin 0. Over many audits the share that flags must not exceed alpha
   (overall, with the Bonferroni correction over the criteria) and alpha / m (each
   criterion). The arms are real simulations (``auditor.measure.run_arm``) and the
   decision is the auditor's own (``auditor.stats``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from auditor import stats
from auditor.audit import BuiltinPolicy, run_audit
from auditor.measure import ArmJob, checkpoints, run_arm
from auditor.spec import AuditSpec, Criterion, PolicySpec
from simulator.scenarios import get_scenario

NULL_METRICS = ("polarization", "extreme_share", "engagement")


def self_audits(scenarios: list[str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for sid in scenarios:
        spec = AuditSpec(
            scenario=sid,
            policy=PolicySpec(kind="myopic"),
            references=[PolicySpec(kind="natural"), PolicySpec(kind="myopic", label="same")],
            users=200,
            steps=20,
            replicates=8,
            criteria=[
                Criterion(name=f"self-{m}", metric=m, reference="same", margin=0.0)
                for m in ("induced_shift", "polarization", "extreme_share", "engagement")
            ],
        )
        rep = run_audit(spec, track=False).report
        same = [e for e in rep.effects if e.reference == "same" and e.mean is not None]
        out[sid] = {
            "verdict": rep.verdict,
            "effects": len(same),
            "max_abs_effect": max(abs(e.mean or 0.0) for e in same),
            "max_abs_bound": max(max(abs(e.ci_low or 0), abs(e.ci_high or 0)) for e in same),
        }
    return out


def null_flag_rates(
    scenario: str, policy: str, audits: int, replicates: int, users: int, steps: int, alpha: float
) -> dict[str, object]:
    spec = get_scenario(scenario)
    n_runs = 2 * audits * replicates
    ckpts = tuple(checkpoints(steps, users, 1))
    finals = {m: np.empty(n_runs) for m in NULL_METRICS}
    for seed in range(n_runs):
        job = ArmJob(spec, "a", BuiltinPolicy(policy), users, steps, seed, seed, ckpts[-1:])
        res = run_arm(job)
        for m in NULL_METRICS:
            finals[m][seed] = res.final[m]
    level = alpha / len(NULL_METRICS)
    rng = np.random.default_rng(0)
    flags = {m: 0 for m in NULL_METRICS}
    any_flag = 0
    for a in range(audits):
        base = 2 * a * replicates
        flagged = False
        for m in NULL_METRICS:
            x = finals[m][base : base + replicates]
            y = finals[m][base + replicates : base + 2 * replicates]
            lower, upper = stats.bounds(x - y, level, 4000, rng)
            if stats.decide(lower, upper, 0.0) == "flag":
                flags[m] += 1
                flagged = True
        any_flag += flagged
    se = math.sqrt(alpha * (1 - alpha) / audits)
    return {
        "scenario": scenario,
        "policy": policy,
        "audits": audits,
        "replicates": replicates,
        "users": users,
        "steps": steps,
        "alpha": alpha,
        "per_criterion_level": level,
        "flag_rate_any": any_flag / audits,
        "flag_rate_per_metric": {m: flags[m] / audits for m in NULL_METRICS},
        "binomial_se_at_alpha": round(se, 4),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--audits", type=int, default=400)
    p.add_argument("--replicates", type=int, default=8)
    p.add_argument("--users", type=int, default=200)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--scenario", default="polarity-1d-v1")
    p.add_argument("--policy", default="myopic")
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--self-scenarios", default="polarity-1d-v1,topics-v1,biased-assimilation-v1")
    args = p.parse_args(argv)
    start = time.perf_counter()
    out = {
        "self_audits": self_audits(args.self_scenarios.split(",")),
        "null": null_flag_rates(
            args.scenario,
            args.policy,
            args.audits,
            args.replicates,
            args.users,
            args.steps,
            args.alpha,
        ),
    }
    out["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
