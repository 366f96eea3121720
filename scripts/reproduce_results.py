"""Reproduce the learner results in docs/results.md; prints JSON, writes figures.

    python scripts/reproduce_results.py evans    [--users 4096] [--iterations 40] [--ray]
    python scripts/reproduce_results.py polarity [--users 2048] [--iterations 40] [--ray]

Every training goes through `auditor.train.train_many`, so each is an MLflow run (see
`recaudit ui` once it exists, or `mlflow ui --backend-store-uri sqlite:///~/.recaudit/mlflow.db`).
Evaluations use fresh users (seeds 1000..1000+R-1) and the scenario's natural reference.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from auditor.executor import resolve_ray_address
from auditor.train import TrainJob, default_config, train_many
from recommenders.registry import make_policy
from recommenders.rl.policy import LearnedPolicy, PolicyBundle
from simulator.engine import build_environment, run_arms
from simulator.scenarios import get_scenario
from simulator.specs import ScenarioSpec

ROOT = Path(__file__).resolve().parents[1]


def evaluate(spec: ScenarioSpec, policy: Any, replicates: int, users: int) -> dict[str, Any]:
    env = build_environment(spec)
    rows = []
    for r in range(replicates):
        res = run_arms(
            env,
            {
                "policy": policy() if callable(policy) else policy,
                "natural": make_policy(spec.natural_policy),
            },
            users=users,
            steps=spec.default_steps,
            seed=1000 + r,
            reference="natural",
            record_full=True,
        )
        rec = res.arms["policy"]
        row = {
            "engagement": float(np.mean(rec.summaries["engagement"])),
            "induced_shift": rec.summaries["induced_shift"][-1],
            "shift": rec.summaries["shift"][-1],
            "polarization": rec.summaries["polarization"][-1],
        }
        if res.types is not None:
            names = [t.name for t in spec.population.types]  # type: ignore[union-attr]
            row["clicks_by_type"] = {
                n: float(rec.clicks[res.types == i].mean()) for i, n in enumerate(names)
            }
            first = rec.slates[0][:, 0]  # type: ignore[index]
            row["first_slate_source_by_type"] = {
                n: torch.bincount(first[res.types == i], minlength=3).tolist()
                for i, n in enumerate(names)
            }
        rows.append(row)
    out: dict[str, Any] = {}
    for key in ("engagement", "induced_shift", "shift", "polarization"):
        vals = [r[key] for r in rows]
        out[key] = {
            "mean": float(np.mean(vals)),
            "sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
        }
    if "clicks_by_type" in rows[0]:
        out["clicks_by_type"] = {
            n: float(np.mean([r["clicks_by_type"][n] for r in rows]))
            for n in rows[0]["clicks_by_type"]
        }
        out["first_slate_source_by_type"] = rows[0]["first_slate_source_by_type"]
    return out


def train(
    spec: ScenarioSpec, members: list[tuple[str, dict[str, Any]]], address: str | None
) -> list[PolicyBundle]:
    jobs = [
        TrainJob(kind=kind, scenario=spec, config=default_config(kind, **cfg))
        for kind, cfg in members
    ]
    return [
        o.bundle for o, _ in train_many(jobs, ray_address=address, parent_name=f"results {spec.id}")
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("experiment", choices=("evans", "polarity"))
    p.add_argument("--users", type=int)
    p.add_argument("--iterations", type=int, default=40)
    p.add_argument("--replicates", type=int, default=5)
    p.add_argument("--eval-users", type=int, default=2000)
    p.add_argument(
        "--weights", default="0,0.25,0.5,1,2", help="distance-penalty weights of the frontier"
    )
    p.add_argument("--ray", action="store_true")
    args = p.parse_args(argv)
    address = resolve_ray_address(args.ray, None)
    result: dict[str, Any] = {"experiment": args.experiment, "iterations": args.iterations}
    if args.experiment == "evans":
        spec = get_scenario("evans-polarization-v1")
        common = {"users": args.users or 4096, "iterations": args.iterations}
        myopic, rl = train(spec, [("ppo-myopic", common), ("ppo", common)], address)
        result["ppo-myopic"] = evaluate(
            spec, LearnedPolicy(myopic), args.replicates, args.eval_users
        )
        result["ppo"] = evaluate(spec, LearnedPolicy(rl), args.replicates, args.eval_users)
        result["natural"] = evaluate(
            spec, lambda: make_policy("random"), args.replicates, args.eval_users
        )
    else:
        spec = get_scenario("polarity-1d-v1")
        common = {"users": args.users or 2048, "iterations": args.iterations}
        weights = [float(w) for w in args.weights.split(",")]
        members = [("ppo-myopic", common), ("ppo", common)]
        members += [("ppo-distance", {**common, "penalty_weight": w}) for w in weights]
        members += [("ppo-path-specific", {**common, "penalty_weight": 1.0})]
        members += [("ppo-safe-shift", {**common, "penalty_weight": 1.0})]
        bundles = train(spec, members, address)
        result["natural"] = evaluate(
            spec, lambda: make_policy("random"), args.replicates, args.eval_users
        )
        result["myopic"] = evaluate(
            spec, lambda: make_policy("myopic"), args.replicates, args.eval_users
        )
        for (kind, cfg), bundle in zip(members, bundles, strict=True):
            name = kind if kind != "ppo-distance" else f"ppo-distance w={cfg['penalty_weight']:g}"
            result[name] = evaluate(spec, LearnedPolicy(bundle), args.replicates, args.eval_users)
        plot_frontier(result, weights, ROOT / "docs" / "figures" / "polarity_frontier.png")
    print(json.dumps(result, indent=2))
    return 0


def plot_frontier(result: dict[str, Any], weights: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=120)
    xs = [result[f"ppo-distance w={w:g}"]["induced_shift"]["mean"] for w in weights]
    ys = [result[f"ppo-distance w={w:g}"]["engagement"]["mean"] for w in weights]
    ax.plot(xs, ys, "o-", color="tab:blue", label="PPO, distance penalty (weights)")
    for w, x, y in zip(weights, xs, ys, strict=True):
        ax.annotate(f"w={w:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    marks = {
        "natural": "k",
        "myopic": "tab:green",
        "ppo-myopic": "tab:olive",
        "ppo": "tab:red",
        "ppo-path-specific": "tab:purple",
        "ppo-safe-shift": "tab:orange",
    }
    for name, color in marks.items():
        r = result[name]
        ax.scatter(
            r["induced_shift"]["mean"],
            r["engagement"]["mean"],
            color=color,
            marker="s",
            label=name,
            zorder=3,
        )
    ax.set_xlabel("induced shift vs natural (mean ||u_T - u_T(natural)||)")
    ax.set_ylabel("engagement (clicks per user-step)")
    ax.set_title("polarity-1d-v1: engagement vs induced shift")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    sys.exit(main())
