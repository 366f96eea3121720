"""Benchmark a full audit end to end; prints one JSON line.

    python bench/audit.py --scenario polarity-1d-v1 --users 5000 --steps 50 --replicates 8

The audited policy and the default references (natural, ppo-myopic, ppo, ppo-distance)
are trained first, outside the timing (an audit takes learners from the trained-policy
cache). The timed part is what a user waits for: embedded Ray start-up, every
(policy, replicate) as a Ray task, the statistics, MLflow logging (a parent run and a run
per arm) and the HTML report with its figures. Peak RSS is sampled over this process and
its children (the Ray workers) every 0.2 s. ``--backend`` picks where the jobs run
(default ``auto``: chosen by the work, as the CLI does).

``--small`` times instead the small audit a new user starts with, end to end from the
CLI in a fresh process (imports, backend choice, MLflow, report included): the policy and
natural, nothing to train, 1,000 users x 50 steps x 8 replicates by default.

    python bench/audit.py --small
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

# bench/simulator.py would shadow the simulator package: put the repository root first
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from simulator.threads import configure_process

configure_process()  # before torch loads OpenMP: idle threads sleep instead of spinning

from auditor.audit import run_audit  # noqa: E402
from auditor.executor import AUTO  # noqa: E402
from auditor.spec import AuditSpec, PolicySpec  # noqa: E402
from dashboards.report import write_report  # noqa: E402


class TreeRss:
    """Peak summed RSS of this process and all its descendants, and their CPU time."""

    def __init__(self) -> None:
        self.peak = 0
        self.cpu: dict[int, float] = {}  # CPU seconds of each process seen (last sample)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                    t = p.cpu_times()
                    self.cpu[p.pid] = t.user + t.system
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(0.2)

    def __enter__(self) -> TreeRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--scenario", default="polarity-1d-v1")
    p.add_argument(
        "--policy", help="the policy under audit (default: ppo-safe-shift; --small: myopic)"
    )
    p.add_argument("--users", type=int, default=5000)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--replicates", type=int, default=8)
    p.add_argument("--train-users", type=int, default=1024, help="learners' training users")
    p.add_argument("--train-iterations", type=int, default=40)
    p.add_argument("--home", help="RECAUDIT_HOME to use (default: a temporary directory)")
    p.add_argument("--backend", choices=("auto", "local", "in-process"), default="auto")
    p.add_argument("--small", action="store_true", help="time a small audit from the CLI")
    args = p.parse_args(argv)
    os.environ["RECAUDIT_HOME"] = args.home or tempfile.mkdtemp(prefix="recaudit-bench-")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    if args.small:
        return small(args)
    args.policy = args.policy or "ppo-safe-shift"
    address = {"auto": AUTO, "local": "local", "in-process": None}[args.backend]

    train = {"users": args.train_users, "iterations": args.train_iterations}
    refs = [PolicySpec(kind="natural")] + [
        PolicySpec(kind=k, params=train) for k in ("ppo-myopic", "ppo", "ppo-distance")
    ]
    spec = AuditSpec(
        scenario=args.scenario,
        policy=PolicySpec(kind=args.policy, params=train),
        references=refs,
        users=args.users,
        steps=args.steps,
        replicates=args.replicates,
    )
    # 1. train (or find) the learners, untimed: a tiny in-process audit resolves them
    t0 = time.perf_counter()
    warm = spec.model_copy(update={"users": 4, "steps": 1, "replicates": 2})
    run_audit(warm, track=True)
    train_s = time.perf_counter() - t0

    # 2. the timed audit, on embedded Ray started here
    cpu0 = sum(psutil.Process().cpu_times()[:2])
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as out, TreeRss() as rss:
        start = time.perf_counter()
        result = run_audit(spec, ray_address=address, render=write_report, out_dir=Path(out))
        seconds = time.perf_counter() - start
    t = result.report.provenance.timings
    arms = len(result.report.arms)
    print(
        json.dumps(
            {
                "bench": "audit",
                "scenario": args.scenario,
                "policy": args.policy,
                "users": args.users,
                "steps": args.steps,
                "replicates": args.replicates,
                "arms": arms,
                "user_steps": args.users * args.steps * arms * args.replicates,
                "seconds": round(seconds, 2),
                "simulate_s": round(t.simulate_s, 2),
                "analyse_s": round(t.analyse_s, 2),
                "log_s": round(t.log_s, 2),
                "verdict": result.report.verdict,
                "backend": result.report.provenance.executor,
                "backend_reason": result.report.provenance.executor_reason,
                "peak_rss_mb_tree": round(rss.peak / 2**20, 1),
                "peak_rss_mb_driver": round(
                    resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
                ),
                "untimed_training_s": round(train_s, 1),
                # CPU seconds of the timed part (driver and Ray workers, sampled every
                # 0.2 s): unlike the wall time, it hardly depends on other processes' load
                "cpu_s_tree": round(sum(rss.cpu.values()) - cpu0, 1),
                "load_before": round(load, 2),
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "load_after": round(os.getloadavg()[0], 2),
            }
        )
    )
    from auditor.executor import shutdown

    shutdown()
    return 0


def small(args: argparse.Namespace) -> int:
    """The small audit from the CLI, in a fresh process, timed from its start."""
    import subprocess

    users = 1000 if args.users == 5000 else args.users
    exe = Path(sys.executable).parent / "recaudit"
    policy = args.policy or "myopic"
    cmd = [str(exe), "audit", "--scenario", args.scenario, "--policy", policy]
    cmd += ["--references", "natural", "--users", str(users), "--steps", str(args.steps)]
    cmd += ["--replicates", str(args.replicates), "--no-progress", "--json"]
    if args.backend != "auto":
        cmd.append("--ray" if args.backend == "local" else "--in-process")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    with tempfile.TemporaryDirectory() as out, TreeRss() as rss:
        load = os.getloadavg()[0]
        start = time.perf_counter()
        proc = subprocess.run(
            [*cmd, "--out", out], capture_output=True, text=True, env=env, check=False
        )
        seconds = time.perf_counter() - start
        cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode not in (0, 1, 3):
        print(proc.stderr, file=sys.stderr)
        return 1
    report = json.loads(proc.stdout)
    t = report["provenance"]["timings"]
    print(
        json.dumps(
            {
                "bench": "audit-small",
                "policy": policy,
                "command": " ".join(cmd[1:]),
                "scenario": args.scenario,
                "users": users,
                "steps": args.steps,
                "replicates": args.replicates,
                "arms": 2,
                "seconds": round(seconds, 2),
                "in_audit_s": round(t["total_s"], 2),
                "simulate_s": round(t["simulate_s"], 2),
                "log_s": round(t["log_s"], 2),
                "backend": report["provenance"]["executor"],
                "backend_reason": report["provenance"]["executor_reason"],
                "verdict": report["verdict"],
                "peak_rss_mb_tree": round(rss.peak / 2**20, 1),
                "cpu_s_children": round(cpu.ru_utime + cpu.ru_stime, 2),
                "load_before": round(load, 2),
                "load_after": round(os.getloadavg()[0], 2),
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
