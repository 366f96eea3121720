"""Benchmark PPO training against the batched simulator; prints one JSON line.

    python bench/train.py --policy ppo --scenario evans-polarization-v1 --users 4096 --iterations 40

env_steps_per_s counts user-steps of the rollouts over the whole training wall time
(rollouts and updates). The final engagement is the trained policy's clicks per
user-step against fresh users (the same evaluation `recaudit train` reports).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

# bench/simulator.py would shadow the simulator package: put the repository root first
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from simulator.threads import configure_process

configure_process()  # before torch loads OpenMP: idle threads sleep instead of spinning

import torch  # noqa: E402

from auditor.train import EVAL_SEED_OFFSET, default_config, evaluate  # noqa: E402
from recommenders.registry import make_policy  # noqa: E402
from recommenders.rl.ppo import train_ppo  # noqa: E402
from simulator.scenarios import get_scenario  # noqa: E402
from simulator.threads import TRAIN_THREADS  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--policy", default="ppo")
    p.add_argument("--scenario", default="evans-polarization-v1")
    p.add_argument("--users", type=int, default=4096)
    p.add_argument("--iterations", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    spec = get_scenario(args.scenario)
    cfg = default_config(args.policy, users=args.users, iterations=args.iterations, seed=args.seed)
    start = time.perf_counter()
    result = train_ppo(
        spec,
        cfg,
        kind=args.policy,
        natural=lambda: make_policy(spec.natural_policy),
        device=args.device,
    )
    wall = time.perf_counter() - start
    ev = evaluate(result.bundle, spec, 2000, cfg.seed + EVAL_SEED_OFFSET, args.device)
    print(
        json.dumps(
            {
                "bench": "train",
                "policy": args.policy,
                "scenario": spec.id,
                "users": args.users,
                "iterations": args.iterations,
                "horizon": result.bundle.config["horizon"],
                "env_steps": result.env_steps,
                "seconds": round(wall, 2),
                "env_steps_per_s": round(result.env_steps / wall, 1),
                "final_engagement": round(ev["final/engagement"], 4),
                "final_induced_shift": round(ev["final/induced_shift"], 4),
                "train_clicks_last_iteration": round(
                    result.history[-1]["charts/clicks_per_user_step"], 4
                ),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "torch_threads": torch.get_num_threads(),
                "train_threads": TRAIN_THREADS,
                "torch": torch.__version__,
                "python": platform.python_version(),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
