"""``recaudit train``: a learner (PPO) trained against the simulator, tracked in MLflow;
a sweep trains its members as Ray tasks."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .args import (
    RAY_DEFAULT,
    CliError,
    Command,
    add_ray_flags,
    clean,
    finite_float,
    non_negative_int,
    positive_int,
    requested_backend,
)


def register(sub: Any) -> dict[str, Command]:
    tr = sub.add_parser(
        "train",
        help="train a learner (PPO) on a scenario, tracked in MLflow",
        description=(
            "Train a reinforcement-learning recommender against the simulator. Every training run is "
            "an MLflow run (params, per-iteration metrics, the policy as safetensors + JSON) and the "
            "policy is registered as recaudit.<scenario>.<kind>. A sweep trains its members as Ray "
            "tasks, each a child run. " + RAY_DEFAULT
        ),
    )
    tr.add_argument(
        "--policy", required=True, help="trainable policy kind (see 'recaudit policies')"
    )
    tr.add_argument("--scenario", required=True, help="scenario id")
    tr.add_argument(
        "--users", type=positive_int, help="parallel users per iteration (default 4096)"
    )
    tr.add_argument("--iterations", type=positive_int, help="training iterations (default 60)")
    tr.add_argument("--steps", type=positive_int, help="horizon (default: the scenario's)")
    tr.add_argument("--seed", type=non_negative_int, help="training seed (default 0)")
    tr.add_argument("--gamma", type=finite_float, help="discount in [0, 1] (default: the kind's)")
    tr.add_argument(
        "--penalty-weight", type=finite_float, help="penalty weight >= 0 (default: the kind's)"
    )
    tr.add_argument(
        "--sweep", help="NAME=V1,V2,... train one member per value, e.g. penalty_weight=0,0.5,1"
    )
    tr.add_argument(
        "--device", choices=("cpu", "cuda"), default="cpu", help="torch device (default cpu)"
    )
    add_ray_flags(tr, "sweep member")
    tr.add_argument("--json", action="store_true", help="print one JSON object")
    tr.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    return {"train": cmd_train}


def cmd_train(args: argparse.Namespace) -> int:
    from auditor.executor import BackendChoice
    from auditor.train import TrainJob, default_config, train_many
    from recommenders.rl.ppo import PPOConfig
    from simulator.scenarios import get_scenario

    spec = get_scenario(args.scenario)
    overrides = {
        "users": args.users,
        "iterations": args.iterations,
        "steps": args.steps,
        "seed": args.seed,
        "gamma": args.gamma,
        "penalty_weight": args.penalty_weight,
    }
    base = default_config(args.policy, **overrides)
    configs = [base]
    if args.sweep:
        name, sep, values = args.sweep.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not values.strip():
            raise CliError("--sweep takes NAME=V1,V2,... (e.g. penalty_weight=0,0.5,1)")
        if name not in PPOConfig.model_fields:
            raise CliError(
                f"--sweep: unknown setting {name!r}; one of {', '.join(PPOConfig.model_fields)}"
            )
        configs = [
            default_config(args.policy, **{**base.model_dump(), name: v.strip()})
            for v in values.split(",")
        ]
    jobs = [
        TrainJob(kind=args.policy, scenario=spec, config=c, device=args.device) for c in configs
    ]
    # learners are what Ray spreads here (each trains on its own): two or more run on
    # embedded Ray, one in process, unless a flag or RAY_ADDRESS says otherwise
    backend = BackendChoice(requested_backend(args), user_steps=0)
    address = backend.resolve(learners=len(jobs))
    if not args.json:
        print(
            f"training {len(jobs)} {args.policy} polic{'y' if len(jobs) == 1 else 'ies'} on {spec.id}"
            f" ({backend.name}: {backend.reason})",
            file=sys.stderr,
        )
    from tqdm import tqdm

    bar = tqdm(
        total=sum(j.config.iterations for j in jobs),
        desc="training",
        unit="it",
        disable=args.no_progress or not sys.stderr.isatty(),
        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n}/{total} iterations, {postfix}",
    )

    def progress(tp: Any) -> None:
        bar.n = sum(tp.done)
        left = tp.seconds_left()
        bar.set_postfix_str("estimating time left" if left is None else f"{left:.0f} s left")
        bar.refresh()

    try:
        results = train_many(
            jobs,
            ray_address=address,
            parent_name=f"sweep {args.policy} {spec.id}",
            on_progress=progress,
        )
    finally:
        bar.close()
    members = []
    for outcome, ids in results:
        members.append(
            {
                "run_id": ids["run_id"],
                "registered_model": ids["registered_model"],
                "version": ids["version"],
                "final_engagement": outcome.evaluation["final/engagement"],
                "final_induced_shift": outcome.evaluation["final/induced_shift"],
                "seconds": round(outcome.seconds, 3),
                "env_steps_per_s": round(outcome.env_steps_per_s, 1),
                "config": outcome.job.config.model_dump(mode="json"),
            }
        )
    payload: dict[str, Any] = members[0] if len(members) == 1 else {"members": members}
    if args.json:
        print(json.dumps(clean(payload)))
    else:
        from tabulate import tabulate

        rows = [
            [
                m["run_id"][:8],
                m["version"],
                m["config"]["gamma"],
                m["config"]["penalty_weight"],
                f"{m['final_engagement']:.4f}",
                f"{m['final_induced_shift']:.4f}",
                m["seconds"],
                m["env_steps_per_s"],
            ]
            for m in members
        ]
        print(
            tabulate(
                rows,
                headers=[
                    "run",
                    "version",
                    "gamma",
                    "weight",
                    "engagement",
                    "induced shift",
                    "seconds",
                    "env-steps/s",
                ],
            )
        )
        print(f"registered as {members[0]['registered_model']}; see them with: recaudit ui")
    return 0
