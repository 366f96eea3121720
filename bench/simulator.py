"""Throughput benchmark of the simulator's rollout loop (``simulator.engine.run_arms``).

One arm, the oracle-greedy scoring policy (top-S slate by ``<u, x> + appeal`` over all K
items), on a topic-clusters catalog with uniform-sphere users, MNL choice and T-RECS
drift. Prints one JSON line; ``seconds`` is the wall time of ``run_arms`` alone.

    python bench/simulator.py --users 10000 --items 1000 --dim 16 --slate 10 --steps 50

``--contention`` runs the rollout twice: quiet, then next to a busy process (a spinning
Python loop pinned to one core) that the benchmark starts and stops itself, and reports
both throughputs and their ratio (``contended_over_quiet``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

# Run as ``python bench/simulator.py``, this file's folder is sys.path[0] and the file
# itself would shadow the ``simulator`` package: put the repository root there instead.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from simulator.threads import configure_process  # noqa: E402

configure_process()  # before torch loads OpenMP: idle threads sleep instead of spinning

import torch  # noqa: E402

from recommenders.baselines import OracleGreedy  # noqa: E402
from simulator.engine import build_environment, run_arms  # noqa: E402
from simulator.errors import SpecError  # noqa: E402
from simulator.specs import (  # noqa: E402
    MNLChoice,
    ScenarioSpec,
    TopicClustersCatalog,
    TRecsDrift,
    UniformSpherePopulation,
)

N_TOPICS = 10


def topic_layout(items: int, preferred: int = N_TOPICS) -> tuple[int, int]:
    """(n_topics, items_per_topic) with exactly ``items`` items: 10 topics when K is a
    multiple of 10, else the largest divisor of K not above 10 (K prime: one topic)."""
    if items < 1:
        raise ValueError("--items must be positive")
    n_topics = max(t for t in range(1, min(preferred, items) + 1) if items % t == 0)
    return n_topics, items // n_topics


def bench_spec(items: int, dim: int, slate: int) -> ScenarioSpec:
    n_topics, per_topic = topic_layout(items)
    return ScenarioSpec(
        id="bench-simulator-v1",
        title="Simulator throughput benchmark",
        catalog=TopicClustersCatalog(dim=dim, n_topics=n_topics, items_per_topic=per_topic),
        population=UniformSpherePopulation(),
        choice=MNLChoice(temperature=0.1, no_click_utility=0.5),
        dynamics=TRecsDrift(delta=0.1),
        slate_size=slate,
    )


def peak_rss_mb() -> float:
    # Linux reports ru_maxrss in KiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--users", type=int, required=True, help="users (batch size)")
    p.add_argument("--items", type=int, default=1000, help="catalog size K")
    p.add_argument("--dim", type=int, default=16, help="preference / item dimension d")
    p.add_argument("--slate", type=int, default=10, help="slate size S")
    p.add_argument("--steps", type=int, default=50, help="horizon T")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)"
    )
    p.add_argument(
        "--contention",
        action="store_true",
        help="also run next to a busy process on one core, started here; report both",
    )
    return p.parse_args(argv)


_BUSY = "import time\nt = time.time()\nwhile time.time() - t < 3600:\n    pass\n"


class BusyCore:
    """A child process spinning on one core (the last one this process may use)."""

    def __enter__(self) -> BusyCore:
        import subprocess

        core = max(os.sched_getaffinity(0))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _BUSY], preexec_fn=lambda: os.sched_setaffinity(0, {core})
        )
        self.core = core
        time.sleep(0.5)  # let it start spinning
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.kill()
        self.proc.wait()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    try:
        n_topics, _ = topic_layout(args.items)
        spec = bench_spec(args.items, args.dim, args.slate)
        env = build_environment(spec, args.device)
        if args.users < 1 or args.steps < 1:
            raise SpecError("--users and --steps must be positive")
    except (SpecError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        print(f"bench/simulator.py: {exc}", file=sys.stderr)
        return 2
    policies = {"policy": OracleGreedy()}
    setup_seconds = time.perf_counter() - t0

    def sync() -> None:
        if env.device.type == "cuda":
            torch.cuda.synchronize(env.device)

    def timed() -> tuple[float, Any, Any, Any, float]:
        load = os.getloadavg()[0]
        sync()
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t1 = time.perf_counter()
        res = run_arms(env, policies, users=args.users, steps=args.steps, seed=args.seed)
        sync()
        return time.perf_counter() - t1, res, r0, resource.getrusage(resource.RUSAGE_SELF), load

    seconds, result, ru0, ru1, load_before = timed()
    contended: dict[str, Any] = {}
    if args.contention:
        with BusyCore() as busy:
            c_seconds, c_result, _, _, c_load = timed()
        c_summ = c_result.arms["policy"].summaries
        same = c_summ["shift"] == result.arms["policy"].summaries["shift"]
        contended = {
            "contended_seconds": round(c_seconds, 4),
            "contended_user_steps_per_s": round(args.users * args.steps / c_seconds, 1),
            "contended_over_quiet": round(seconds / c_seconds, 3),
            "contended_load_before": round(c_load, 2),
            "busy_core": busy.core,
            "contended_same_result": same,
        }

    summ = result.arms["policy"].summaries
    out = {
        "bench": "simulator",
        "users": args.users,
        "items": env.catalog.size,
        "dim": env.dim,
        "slate": args.slate,
        "steps": args.steps,
        "n_topics": n_topics,
        "device": str(env.device),
        "seed": args.seed,
        "seconds": round(seconds, 4),
        "setup_seconds": round(setup_seconds, 4),
        "user_steps_per_s": round(args.users * args.steps / seconds, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        # CPU time and page faults of run_arms: a high sys share is the allocator handing
        # large tensors back to the OS and faulting them in again every step
        "cpu_user_s": round(ru1.ru_utime - ru0.ru_utime, 2),
        "cpu_sys_s": round(ru1.ru_stime - ru0.ru_stime, 2),
        "minor_faults": ru1.ru_minflt - ru0.ru_minflt,
        # 1-minute load average before and after: other processes on a small machine
        # change the result a lot (two torch threads on two busy cores stall)
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        # sanity values, so a fast but broken run is visible
        "final_click_rate": round(summ["engagement"][-1], 4),
        "final_shift": round(summ["shift"][-1], 4),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        **contended,
    }
    if env.device.type == "cuda":
        out["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated(env.device) / 2**20, 1)
        out["cuda_device"] = torch.cuda.get_device_name(env.device)
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
