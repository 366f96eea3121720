"""Benchmark `recaudit scenario derive` on a log it generates; prints one JSON line.

    python bench/derive.py --interactions 1000000 --users 50000 --items 10000 [--epochs 20] [--threads 1]

The log comes from ``recommenders.derive.synthetic_log`` (taste groups, skewed activity,
Zipf popularity; seed 0), written as parquet with its item table, then derived with the
CLI's defaults (BPR, 16 dimensions, 20 epochs, 50 steps, slate 10, T-RECS drift, the
item table's ``leaning`` as polarity axis, 1 torch thread: RecBole's many small operations
run slower on 2 threads of a shared 2-core machine). ``seconds`` is the derivation alone (reading
the log, RecBole, calibration, writing); ``peak_rss_mb`` is the process's peak resident
memory (ru_maxrss), log generation included.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

# bench/simulator.py would shadow the simulator package: put the repository root first
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recommenders.derive import DeriveOptions, ItemColumns, derive, synthetic_log


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--interactions", type=int, default=1_000_000)
    p.add_argument("--users", type=int, default=50_000)
    p.add_argument("--items", type=int, default=10_000)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    log, table = synthetic_log(args.users, args.items, args.interactions, seed=0)
    with tempfile.TemporaryDirectory(prefix="recaudit-bench-derive-") as tmp:
        d = Path(tmp)
        log.to_parquet(d / "log.parquet", index=False)
        table.to_parquet(d / "items.parquet", index=False)
        gen_seconds = time.perf_counter() - t0
        del log
        start = time.perf_counter()
        prov = derive(
            d / "log.parquet",
            d / "scenario",
            items_path=d / "items.parquet",
            item_columns=ItemColumns(category="genre", polarity="leaning"),
            options=DeriveOptions(
                scenario_id="bench-v1", dim=args.dim, epochs=args.epochs, threads=args.threads
            ),
        )
        seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cal = prov["calibration"]
    print(
        json.dumps(
            {
                "bench": "derive",
                "interactions": args.interactions,
                "users": prov["users"],
                "items": prov["items"]["catalog"],
                "dim": args.dim,
                "epochs": args.epochs,
                "threads": args.threads,
                "seconds": round(seconds, 1),
                "fit_seconds": prov["embeddings"]["fit_seconds"],
                "generate_seconds": round(gen_seconds, 1),
                "peak_rss_mb": round(usage.ru_maxrss / 1024),
                "cpu_user_s": round(usage.ru_utime, 1),
                "recall@10": (prov["embeddings"]["test"] or {}).get("recall@10"),
                "log_rate": round(cal["log_rate"], 4),
                "simulated_rate": round(cal["simulated_rate"], 4),
                "calibration_relative_error": round(cal["relative_error"], 4),
                "polarity_r2": round(prov["polarity"]["r2"], 3),
                "load_before": round(load_before, 2),
                "load_after": round(os.getloadavg()[0], 2),
                "torch": torch.__version__,
                "python": platform.python_version(),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
