"""The ``recaudit`` command line.

Every command validates its input and turns a bad value into one line on stderr and exit
status 2 (no traceback); a crash (a bug, a broken environment) exits 4, apart from every
verdict's code, and a closed pipe on stdout (``| head``) ends quietly. Heavy imports (torch, Ray, pandas) happen inside commands so
that ``recaudit --help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 4  # a crash; apart from the verdicts' 0 pass, 1 flag, 3 inconclusive
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports a reader that went away
EXIT_STATUS_HELP = (
    "exit status: 0 success (audit: pass), 1 audit flag, 3 audit inconclusive, "
    "2 bad input (one line on stderr), 4 internal error, 130 interrupted"
)


class CliError(Exception):
    """A problem with the user's input; printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _int_arg(
    what: str, low: int, high: int | None = None, too_low: str = ""
) -> Callable[[str], int]:
    """An argparse type: an integer in [low, high], with a readable error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = too_low if value < low and too_low else f"must be in {low}..{high}"
            raise argparse.ArgumentTypeError(f"{bound}, got {value}")
        return value

    return parse


_positive_int = _int_arg("a positive integer", 1, too_low="must be positive")
_non_negative_int = _int_arg("a non-negative integer", 0, too_low="must be non-negative")
_port = _int_arg("a port number", 1, 65535)


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be finite, got {text}")
    return value


#: commands that live in their own modules (serve, keys, model), filled in by build_parser
SERVICE_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="recaudit",
        description="Audit recommender policies for the preference shifts and polarization they induce.",
        epilog=EXIT_STATUS_HELP,
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    sim = sub.add_parser(
        "simulate",
        help="simulate a policy against its natural counterfactual",
        description=(
            "Run a policy and the scenario's natural reference policy on the same simulated users "
            "with common random numbers, one replicate per seed, and report engagement, preference "
            "shift, induced shift and polarization."
        ),
    )
    sim.add_argument(
        "--scenario",
        required=True,
        help="scenario id (see 'recaudit scenarios') or a derived scenario's directory",
    )
    sim.add_argument("--policy", required=True, help="policy kind (see 'recaudit policies')")
    sim.add_argument(
        "--users", type=_positive_int, help="number of users (default: the scenario's)"
    )
    sim.add_argument(
        "--steps", type=_positive_int, help="number of steps (default: the scenario's)"
    )
    sim.add_argument(
        "--seeds", type=_positive_int, default=3, help="number of replicates (default 3)"
    )
    sim.add_argument("--seed", type=_non_negative_int, default=0, help="first seed (default 0)")
    sim.add_argument(
        "--device", choices=("cpu", "cuda"), default="cpu", help="torch device (default cpu)"
    )
    sim.add_argument("--ray", action="store_true", help="run each seed as a task on embedded Ray")
    sim.add_argument(
        "--ray-address", help="run on the Ray cluster at this address (or set RAY_ADDRESS)"
    )
    sim.add_argument("--out", type=Path, help="write parquet files, the spec and the result here")
    sim.add_argument("--full", action="store_true", help="record full trajectories (with --out)")
    sim.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    sim.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    tr = sub.add_parser(
        "train",
        help="train a learner (PPO) on a scenario, tracked in MLflow",
        description=(
            "Train a reinforcement-learning recommender against the simulator. Every training run is "
            "an MLflow run (params, per-iteration metrics, the policy as safetensors + JSON) and the "
            "policy is registered as recaudit.<scenario>.<kind>. A sweep trains its members as Ray "
            "tasks, each a child run."
        ),
    )
    tr.add_argument(
        "--policy", required=True, help="trainable policy kind (see 'recaudit policies')"
    )
    tr.add_argument("--scenario", required=True, help="scenario id")
    tr.add_argument(
        "--users", type=_positive_int, help="parallel users per iteration (default 4096)"
    )
    tr.add_argument("--iterations", type=_positive_int, help="training iterations (default 60)")
    tr.add_argument("--steps", type=_positive_int, help="horizon (default: the scenario's)")
    tr.add_argument("--seed", type=_non_negative_int, help="training seed (default 0)")
    tr.add_argument("--gamma", type=_finite_float, help="discount in [0, 1] (default: the kind's)")
    tr.add_argument(
        "--penalty-weight", type=_finite_float, help="penalty weight >= 0 (default: the kind's)"
    )
    tr.add_argument(
        "--sweep", help="NAME=V1,V2,... train one member per value, e.g. penalty_weight=0,0.5,1"
    )
    tr.add_argument(
        "--device", choices=("cpu", "cuda"), default="cpu", help="torch device (default cpu)"
    )
    tr.add_argument("--ray", action="store_true", help="run sweep members on embedded Ray")
    tr.add_argument("--ray-address", help="run sweep members on the Ray cluster at this address")
    tr.add_argument("--json", action="store_true", help="print one JSON object")
    tr.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    ui = sub.add_parser(
        "ui",
        help="start the MLflow UI on this machine against recaudit's store",
        description="Start the MLflow UI (loopback only by default) on the default SQLite store "
        "in RECAUDIT_HOME, or on MLFLOW_TRACKING_URI, and print a link to the latest audit's "
        "run. Ctrl-C or SIGTERM stops it and the server it started.",
    )
    ui.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    ui.add_argument("--port", type=_port, default=5000, help="port (default 5000)")

    from .audit_cli import add_parsers

    add_parsers(sub, _positive_int, _non_negative_int)
    from .scenario_cli import add_parsers as add_scenario_parsers

    add_scenario_parsers(sub, _positive_int, _non_negative_int)
    from .fit_cli import add_parser as add_fit_parser

    add_fit_parser(sub, _positive_int, _non_negative_int)
    from service.cli import register

    SERVICE_COMMANDS.update(register(sub))
    from .model_cli import register as register_model

    SERVICE_COMMANDS.update(register_model(sub))

    scen = sub.add_parser("scenarios", help="list the scenario registry")
    scen.add_argument("--json", action="store_true", help="print JSON")
    pol = sub.add_parser("policies", help="list the policy kinds")
    pol.add_argument("--json", action="store_true", help="print JSON")
    return parser


# ------------------------------------------------------------------------ commands
def prepare_out_dir(out: Path, marker: str) -> None:
    """Create ``--out`` now, before any work, so that a directory that cannot be made or
    written is bad input found in a second, not after the whole run."""
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {out} exists and is not a directory")
    if (out / marker).exists():
        raise CliError(f"--out {out} already holds results; choose another directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"--out {out}: cannot create it: {exc.strerror or exc}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise CliError(f"--out {out}: not writable")


def _print_listing(rows: list[dict[str, Any]], key: str, text: str, as_json: bool) -> None:
    """A registry listing: JSON, or one line per entry (its key, then a description)."""
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    width = max(len(r[key]) for r in rows)
    for r in rows:
        print(f"{r[key]:<{width}}  {r[text]}")


def cmd_scenarios(args: argparse.Namespace) -> int:
    from simulator.scenarios import SCENARIOS

    rows = [
        {
            "id": s.id,
            "title": s.title,
            "source": s.source,
            "shows": s.shows,
            "fingerprint": s.fingerprint(),
        }
        for s in SCENARIOS.values()
    ]
    _print_listing(rows, "id", "title", args.json)
    return 0


def cmd_policies(args: argparse.Namespace) -> int:
    from recommenders.registry import POLICIES

    rows = [
        {"name": p.name, "summary": p.summary, "oracle": p.oracle, "trainable": p.trainable}
        for p in POLICIES.values()
    ]
    _print_listing(rows, "name", "summary", args.json)
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from auditor.executor import resolve_ray_address, run_jobs
    from auditor.simulate import SimJob, aggregate, check_fits, run_simulation, versions
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
    address = resolve_ray_address(args.ray, args.ray_address)
    policy_config, policy_weights, policy_run = None, None, None
    if kind.trainable:
        from auditor.train import resolve_bundle

        print(
            f"recaudit: looking up a trained {kind.name} for {spec.id} (training it if needed)",
            file=sys.stderr,
        )
        bundle, policy_run = resolve_bundle(kind.name, spec)
        policy_config, policy_weights = bundle.config, bundle.weights
    jobs = [
        SimJob(
            scenario=spec,
            policy=args.policy,
            users=users,
            steps=steps,
            seed=args.seed + i,
            device=args.device,
            record_full=args.full,
            per_user=out_dir is not None,
            policy_config=policy_config,
            policy_weights=policy_weights,
        )
        for i in range(args.seeds)
    ]
    check_fits(jobs, concurrent=1 if address is None else (os.cpu_count() or 1))

    from functools import partial

    from tqdm import tqdm

    show_progress = not args.no_progress and sys.stderr.isatty()
    start = time.perf_counter()
    if address is None:  # progress per step
        bar = tqdm(
            total=len(jobs) * steps, desc="simulating", unit="step", disable=not show_progress
        )
        done_steps = [0]

        def tick(t: int) -> None:
            bar.update(t - done_steps[0])
            done_steps[0] = 0 if t == steps else t

        outcomes = run_jobs(partial(run_simulation, progress=tick), jobs)
    else:  # progress per finished seed
        bar = tqdm(total=len(jobs), desc="seeds", unit="seed", disable=not show_progress)
        outcomes = run_jobs(
            run_simulation, jobs, ray_address=address, on_done=lambda _i: bar.update(1)
        )
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
        "seeds": [j.seed for j in jobs],
        "device": args.device,
        "backend": "in-process"
        if address is None
        else ("ray-embedded" if address == "local" else "ray-cluster"),
        "seconds": round(seconds, 3),
        "arms": aggregate(outcomes),
        "out": str(out_dir) if out_dir else None,
        "versions": versions(),
    }
    if out_dir is not None:
        write_outputs(out_dir, spec, jobs, outcomes, result)
    if args.json:
        print(json.dumps(_clean(result)))
    else:
        print(render_table(result))
    return 0


def write_outputs(
    out_dir: Path, spec: Any, jobs: list[Any], outcomes: list[Any], result: dict[str, Any]
) -> None:
    import pandas as pd

    out_dir.mkdir(parents=True, exist_ok=True)
    pd.concat([o.summary for o in outcomes], ignore_index=True).to_parquet(
        out_dir / "summary.parquet"
    )
    pd.concat([o.per_user for o in outcomes], ignore_index=True).to_parquet(
        out_dir / "per_user.parquet"
    )
    if jobs[0].record_full:
        pd.concat([o.trajectories for o in outcomes], ignore_index=True).to_parquet(
            out_dir / "trajectories.parquet"
        )
    job_spec = jobs[0].model_dump(mode="json", exclude={"seed", "policy_weights"})
    job_spec["seeds"] = [j.seed for j in jobs]
    job_spec["fingerprint"] = spec.fingerprint()
    (out_dir / "spec.json").write_text(json.dumps(job_spec, indent=2) + "\n")
    (out_dir / "result.json").write_text(json.dumps(_clean(result), indent=2) + "\n")


def _clean(obj: Any) -> Any:
    """JSON has no NaN: write null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    return obj


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


def cmd_train(args: argparse.Namespace) -> int:
    from auditor.executor import resolve_ray_address
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
    address = resolve_ray_address(args.ray, args.ray_address)
    if not args.json:
        print(
            f"training {len(jobs)} {args.policy} polic{'y' if len(jobs) == 1 else 'ies'} on {spec.id}",
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
        print(json.dumps(_clean(payload)))
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


def cmd_ui(args: argparse.Namespace) -> int:
    import signal
    import socket
    import subprocess

    from auditor import tracking

    with socket.socket() as s:
        # as the server will: a port left in TIME_WAIT by a stopped UI is free
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((args.host, args.port))
        except OSError as exc:
            raise CliError(
                f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}"
            ) from None
    cmd = tracking.ui_command(args.host, args.port)
    tracking.mark_experiments()  # open on the runs view, not MLflow 3's GenAI view
    url = f"http://{args.host}:{args.port}"
    print(
        f"MLflow UI for {tracking.redact(tracking.tracking_uri())} at {url} (Ctrl-C stops it)",
        flush=True,
    )
    latest = tracking.latest_audit()
    if latest is not None:
        print(f"latest audit: {tracking.run_link(*latest, base=url)}", flush=True)
    # its own process group, so that stopping this command stops the server's workers too
    server = subprocess.Popen(cmd, start_new_session=True)

    def stop(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    try:
        return server.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()


def cmd_audit(args: argparse.Namespace) -> int:
    from .audit_cli import cmd_audit as run

    return run(args)


def cmd_history(args: argparse.Namespace) -> int:
    from .audit_cli import cmd_history as run

    return run(args)


def cmd_scenario(args: argparse.Namespace) -> int:
    from .scenario_cli import cmd_scenario as run

    return run(args)


def cmd_fit(args: argparse.Namespace) -> int:
    from .fit_cli import cmd_fit as run

    return run(args)


COMMANDS = {
    "audit": cmd_audit,
    "scenario": cmd_scenario,
    "fit": cmd_fit,
    "history": cmd_history,
    "simulate": cmd_simulate,
    "train": cmd_train,
    "ui": cmd_ui,
    "scenarios": cmd_scenarios,
    "policies": cmd_policies,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from recaudit import __version__

        print(f"recaudit {__version__}")
        return 0
    if args.command is None:
        parser.print_help()
        return EXIT_BAD_INPUT
    from pydantic import ValidationError

    from simulator.errors import SpecError

    try:
        code = {**COMMANDS, **SERVICE_COMMANDS}[args.command](args)
        sys.stdout.flush()  # a reader gone away shows here, not at exit
        return code
    except BrokenPipeError:
        # the reader (``| head``) has what it wanted: stop quietly (Python's recipe)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except (CliError, SpecError) as exc:
        print(f"recaudit: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        print(f"recaudit: error: invalid {where}: {first['msg']}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("recaudit: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("RECAUDIT_DEBUG"):
            raise
        print(
            f"recaudit: internal error: {type(exc).__name__}: {exc} (set RECAUDIT_DEBUG=1 for a traceback)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
