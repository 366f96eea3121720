"""``recaudit simulate``: a policy against its natural counterfactual, one replicate per
seed; the figures are the metric registry's (``simulator.metric_registry``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from .args import (
    RAY_DEFAULT,
    CliError,
    Command,
    add_ray_flags,
    clean,
    non_negative_int,
    positive_int,
    prepare_out_dir,
    requested_backend,
)


def register(sub: Any) -> dict[str, Command]:
    sim = sub.add_parser(
        "simulate",
        help="simulate a policy against its natural counterfactual",
        description=(
            "Run a policy and the scenario's natural reference policy on the same simulated users "
            "with common random numbers, one replicate per seed, and report engagement, preference "
            "shift, induced shift and polarization. " + RAY_DEFAULT
        ),
    )
    sim.add_argument(
        "--scenario",
        required=True,
        help="scenario id (see 'recaudit scenarios') or a derived scenario's directory",
    )
    sim.add_argument("--policy", required=True, help="policy kind (see 'recaudit policies')")
    sim.add_argument("--users", type=positive_int, help="number of users (default: the scenario's)")
    sim.add_argument("--steps", type=positive_int, help="number of steps (default: the scenario's)")
    sim.add_argument(
        "--seeds", type=positive_int, default=3, help="number of replicates (default 3)"
    )
    sim.add_argument("--seed", type=non_negative_int, default=0, help="first seed (default 0)")
    sim.add_argument(
        "--device", choices=("cpu", "cuda"), default="cpu", help="torch device (default cpu)"
    )
    add_ray_flags(sim, "seed")
    sim.add_argument("--out", type=Path, help="write parquet files, the spec and the result here")
    sim.add_argument("--full", action="store_true", help="record full trajectories (with --out)")
    sim.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    sim.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    return {"simulate": cmd_simulate}


def cmd_simulate(args: argparse.Namespace) -> int:
    from auditor.executor import BackendChoice
    from auditor.plan import BuiltinPolicy
    from auditor.simulate import (
        aggregate,
        check_fits,
        run_simulation_jobs,
        simulation_jobs,
        versions,
    )
    from recommenders.registry import get_kind, make_policy
    from simulator.derived import resolve_scenario

    spec = resolve_scenario(args.scenario)
    kind = get_kind(args.policy)  # validate the name before any work
    make_policy(spec.natural_policy)
    if args.full and args.out is None:
        raise CliError("--full records trajectories to files: give --out DIR too")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise CliError("--device cuda was asked for but no CUDA device is available")
    out_dir: Path | None = args.out
    if out_dir is not None:
        prepare_out_dir(out_dir, "result.json")
    users = args.users or spec.default_users
    steps = args.steps or spec.default_steps
    backend = BackendChoice(
        requested_backend(args), user_steps=users * steps * 2 * args.seeds
    )  # the policy and the natural arm, every seed
    address = backend.resolve()
    policy_config, policy_weights, policy_run = None, None, None
    if kind.trainable:
        from auditor.train import resolve_bundle

        print(
            f"recaudit: looking up a trained {kind.name} for {spec.id} (training it if needed)",
            file=sys.stderr,
        )
        bundle, policy_run = resolve_bundle(kind.name, spec)
        policy_config, policy_weights = bundle.config, bundle.weights
    seeds = [args.seed + i for i in range(args.seeds)]
    jobs = simulation_jobs(
        spec,
        BuiltinPolicy(args.policy, policy_config, policy_weights),
        users=users,
        steps=steps,
        seeds=seeds,
        device=args.device,
        full=args.full,
        keep_ids=out_dir is not None,
    )
    check_fits(jobs, concurrent=1 if address is None else (os.cpu_count() or 1))

    from tqdm import tqdm

    show_progress = not args.no_progress and sys.stderr.isatty()
    if not args.json:
        print(f"backend: {backend.name} ({backend.reason})", file=sys.stderr)
    start = time.perf_counter()
    if address is None:  # progress per step
        bar = tqdm(
            total=len(jobs) * steps, desc="simulating", unit="step", disable=not show_progress
        )
        done_steps = [0]

        def tick(t: int) -> None:
            bar.update(t - done_steps[0])
            done_steps[0] = 0 if t == steps else t

        outcomes = run_simulation_jobs(jobs, progress=tick)
    else:  # progress per finished seed
        bar = tqdm(total=len(jobs), desc="seeds", unit="seed", disable=not show_progress)
        outcomes = run_simulation_jobs(jobs, address, on_done=lambda _i: bar.update(1))
    bar.close()
    seconds = time.perf_counter() - start

    result: dict[str, Any] = {
        "scenario": spec.id,
        "fingerprint": spec.fingerprint(),
        "policy": args.policy,
        "policy_run_id": policy_run,
        "natural_policy": spec.natural_policy,
        "users": users,
        "steps": steps,
        "seeds": seeds,
        "device": args.device,
        "backend": "in-process"
        if address is None
        else ("ray-embedded" if address == "local" else "ray-cluster"),
        "backend_reason": backend.reason,
        "seconds": round(seconds, 3),
        "arms": aggregate(outcomes),
        "out": str(out_dir) if out_dir else None,
        "versions": versions(),
    }
    if out_dir is not None:
        write_outputs(out_dir, spec, args, outcomes, result, policy_config)
    if args.json:
        print(json.dumps(clean(result)))
    else:
        print(render_table(result))
    return 0


def write_outputs(
    out_dir: Path,
    spec: Any,
    args: argparse.Namespace,
    outcomes: list[Any],
    result: dict[str, Any],
    policy_config: dict[str, Any] | None,
) -> None:
    from auditor.simulate import per_user_frame, summary_frame, trajectory_frame

    out_dir.mkdir(parents=True, exist_ok=True)
    summary_frame(outcomes).to_parquet(out_dir / "summary.parquet")
    per_user_frame(outcomes).to_parquet(out_dir / "per_user.parquet")
    if args.full:
        trajectory_frame(outcomes).to_parquet(out_dir / "trajectories.parquet")
    job_spec = {
        "scenario": spec.model_dump(mode="json"),
        "policy": args.policy,
        "users": result["users"],
        "steps": result["steps"],
        "device": args.device,
        "record_full": args.full,
        "per_user": True,
        "policy_config": policy_config,
        "seeds": result["seeds"],
        "fingerprint": spec.fingerprint(),
    }
    (out_dir / "spec.json").write_text(json.dumps(job_spec, indent=2) + "\n")
    (out_dir / "result.json").write_text(json.dumps(clean(result), indent=2) + "\n")


def render_table(result: dict[str, Any]) -> str:
    from tabulate import tabulate

    from simulator.metric_registry import HEADLINE, REGISTRY

    arms = result["arms"]
    n = len(result["seeds"])
    head = [
        f"figure (mean ± sd over {n} seed{'' if n == 1 else 's'})",
        f"policy: {result['policy']}",
        f"natural: {result['natural_policy']}",
    ]
    rows = []
    for key in HEADLINE:  # every figure is in result.json and --json
        row = [f"{key} ({REGISTRY[key].unit})"]
        for arm in ("policy", "natural"):
            f = arms[arm][key]
            row.append(f"{f['mean']:.4f} ± {f['sd']:.4f}")
        rows.append(row)
    lines = [
        f"scenario {result['scenario']} (fingerprint {result['fingerprint']}): "
        f"{result['users']} users x {result['steps']} steps, seeds {result['seeds'][0]}..{result['seeds'][-1]}, "
        f"{result['backend']}, {result['seconds']:.1f} s",
        tabulate(rows, headers=head, tablefmt="simple"),
    ]
    if result["out"]:
        lines.append(
            f"results written to {result['out']} (summary.parquet, per_user.parquet, spec.json, result.json)"
        )
    return "\n".join(lines)
