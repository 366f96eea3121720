"""Reproduce the learner results in docs/results.md; prints JSON, writes figures.

    python scripts/reproduce_results.py evans    [--users 4096] [--iterations 40] [--ray]
    python scripts/reproduce_results.py polarity [--users 2048] [--iterations 40] [--ray]

Every training goes through `auditor.train.train_many`, so each is an MLflow run (see
`recaudit ui` once it exists, or `mlflow ui --backend-store-uri sqlite:///~/.recaudit/mlflow.db`).
Evaluations use fresh users (seeds 1000..1000+R-1) and the scenario's natural reference.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from auditor.executor import resolve_ray_address
from auditor.measure import run_arm
from auditor.plan import BuiltinPolicy
from auditor.simulate import simulation_jobs
from auditor.train import TrainJob, default_config, train_many
from recommenders.rl.policy import LearnedPolicy, PolicyBundle
from simulator.engine import build_environment, run_arms
from simulator.policy import Policy
from simulator.scenarios import get_scenario
from simulator.specs import ScenarioSpec

ROOT = Path(__file__).resolve().parents[1]


#: the figures of docs/results.md, as the metric registry computes them
FIGURES = ("engagement", "induced_shift", "shift", "polarization")


def first_slate_sources(
    spec: ScenarioSpec, policy: Callable[[], Policy], users: int, seed: int
) -> torch.Tensor:
    """The first item of every user's first slate (a slate diagnostic, not a figure)."""
    env = build_environment(spec)
    res = run_arms(env, {"policy": policy()}, users=users, steps=1, seed=seed, record_full=True)
    return res.arms["policy"].slates[0][:, 0]  # type: ignore[index]


def evaluate(
    spec: ScenarioSpec, policy: Callable[[], Policy], replicates: int, users: int
) -> dict[str, Any]:
    """The policy beside the natural counterfactual on fresh users, one replicate per
    seed 1000..1000+R-1, measured as `recaudit simulate` and audits measure (run_arm and
    the metric registry)."""
    seeds = [1000 + r for r in range(replicates)]
    jobs = simulation_jobs(
        spec, policy, users=users, steps=spec.default_steps, seeds=seeds, measure_natural=False
    )
    outcomes = [run_arm(j) for j in jobs]
    out: dict[str, Any] = {}
    for key in FIGURES:
        vals = [o.final[key] for o in outcomes]
        out[key] = {
            "mean": float(np.mean(vals)),
            "sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
        }
    types = outcomes[0].types
    if types is not None:
        names = [t.name for t in spec.population.types]  # type: ignore[union-attr]
        out["clicks_by_type"] = {  # per replicate the type's mean, then their mean
            n: float(
                np.mean([o.per_user["cumulative_clicks"][o.types == i].mean() for o in outcomes])
            )
            for i, n in enumerate(names)
        }
        first = first_slate_sources(spec, policy, users, seeds[0])
        t = torch.from_numpy(types)
        out["first_slate_source_by_type"] = {
            n: torch.bincount(first[t == i], minlength=3).tolist() for i, n in enumerate(names)
        }
    return out


def learned(bundle: PolicyBundle) -> Callable[[], Policy]:
    return functools.partial(LearnedPolicy, bundle)


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
        result["ppo-myopic"] = evaluate(spec, learned(myopic), args.replicates, args.eval_users)
        result["ppo"] = evaluate(spec, learned(rl), args.replicates, args.eval_users)
        result["natural"] = evaluate(
            spec, BuiltinPolicy(spec.natural_policy), args.replicates, args.eval_users
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
            spec, BuiltinPolicy(spec.natural_policy), args.replicates, args.eval_users
        )
        result["myopic"] = evaluate(spec, BuiltinPolicy("myopic"), args.replicates, args.eval_users)
        for (kind, cfg), bundle in zip(members, bundles, strict=True):
            name = kind if kind != "ppo-distance" else f"ppo-distance w={cfg['penalty_weight']:g}"
            result[name] = evaluate(spec, learned(bundle), args.replicates, args.eval_users)
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
