"""Calibration evidence for the auditor's verdicts; prints one JSON line.

    python scripts/calibrate.py --audits 400 --replicates 8

1. Self-audits: a policy audited against itself (same seeds) must give exactly zero
   effects and pass, on every scenario given.
2. Null differences: two arms that differ only in their random numbers (the same policy
   on independent seeds, so the true effect is zero) are compared with the auditor's
   criteria at margin 0. Over many audits the share that flags must not exceed alpha
   (overall, with the Bonferroni correction over the criteria) and alpha / m (each
   criterion), for the replicate-level analysis (replicate means, expanded bootstrap) and
   for the user-level one (per-user values clustered by replicate, t bounds). The arms
   are real simulations (``auditor.measure.run_arm``) and the decisions are the
   auditor's own (``auditor.stats``).
3. Power: the same null pairs with a known effect added to one arm's per-user engagement;
   the share of audits whose criterion (margin 0, level alpha / m) flags, per analysis.
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


#: per-user metrics tested with the user-level analysis (users independent given myopic)
USER_NULL_METRICS = ("engagement", "shift")
#: true effects added to one arm for the power table, in engagement units (clicks/step)
POWER_EFFECTS = (0.0, 0.005, 0.01, 0.02, 0.03, 0.05)


def _replicate_flag(d: np.ndarray, level: float, rng: np.random.Generator) -> bool:
    lower, upper = stats.bounds(d, level, 4000, rng)
    return stats.decide(lower, upper, 0.0) == "flag"


def _user_flag(d: np.ndarray, level: float) -> bool:
    """``d`` [replicates, users]: the auditor's user-level analysis (clustered by replicate)."""
    ul = stats.user_level(d)
    lower, upper = stats.t_bounds(float(d.mean(axis=1).mean()), ul.se, ul.df, level)
    return stats.decide(lower, upper, 0.0) == "flag"


def null_flag_rates(
    scenario: str, policy: str, audits: int, replicates: int, users: int, steps: int, alpha: float
) -> dict[str, object]:
    """Null audits whose two arms differ by independent randomness only (the same policy on
    disjoint seeds), decided by both analyses; and the power table: the same arms with a
    known effect added to one of them."""
    spec = get_scenario(scenario)
    n_runs = 2 * audits * replicates
    ckpts = tuple(checkpoints(steps, users, 1))
    finals = {m: np.empty(n_runs) for m in NULL_METRICS}
    per_user = {m: np.empty((n_runs, users)) for m in USER_NULL_METRICS}
    for seed in range(n_runs):
        job = ArmJob(spec, "a", BuiltinPolicy(policy), users, steps, seed, seed, ckpts[-1:])
        res = run_arm(job)
        for m in NULL_METRICS:
            finals[m][seed] = res.final[m]
        for m in USER_NULL_METRICS:
            per_user[m][seed] = res.per_user[m]
    level = alpha / len(NULL_METRICS)
    flags = {m: 0 for m in NULL_METRICS}
    user_flags = {m: 0 for m in USER_NULL_METRICS}
    any_flag = any_user_flag = 0
    detected = {
        "replicate": {e: 0 for e in POWER_EFFECTS},
        "user": {e: 0 for e in POWER_EFFECTS},
    }
    for a in range(audits):
        x_rows = slice(2 * a * replicates, (2 * a + 1) * replicates)
        y_rows = slice((2 * a + 1) * replicates, (2 * a + 2) * replicates)
        flagged = False
        for m in NULL_METRICS:
            d = finals[m][x_rows] - finals[m][y_rows]
            if _replicate_flag(d, level, stats.stream(a, "null", m)):
                flags[m] += 1
                flagged = True
        any_flag += flagged
        flagged = False
        for m in USER_NULL_METRICS:
            if _user_flag(per_user[m][x_rows] - per_user[m][y_rows], level):
                user_flags[m] += 1
                flagged = True
        any_user_flag += flagged
        # power: one arm's engagement raised by a known amount, every user alike
        du = per_user["engagement"][x_rows] - per_user["engagement"][y_rows]
        for e in POWER_EFFECTS:
            rng = stats.stream(a, "power", str(e))
            detected["replicate"][e] += _replicate_flag(du.mean(axis=1) + e, level, rng)
            detected["user"][e] += _user_flag(du + e, level)
    se = math.sqrt(alpha * (1 - alpha) / audits)
    se_m = math.sqrt(level * (1 - level) / audits)
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
        "user_level_flag_rate_any": any_user_flag / audits,
        "user_level_flag_rate_per_metric": {m: user_flags[m] / audits for m in USER_NULL_METRICS},
        "binomial_se_at_alpha": round(se, 4),
        "binomial_se_at_level": round(se_m, 4),
        "power_engagement": {
            kind: {str(e): n / audits for e, n in rates.items()} for kind, rates in detected.items()
        },
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
