"""The thread and wait policy (simulator/threads.py) reaches every place torch runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMALL_BENCH = ["--users", "300", "--steps", "3", "--items", "100"]


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "RAY_ADDRESS")}


def test_the_cli_and_the_service_set_the_passive_wait_policy_before_torch_loads():
    code = (
        "import os, sys; import {mod}; "
        "print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)"
    )
    for mod in ("recaudit", "service"):
        out = subprocess.run(
            [sys.executable, "-c", code.format(mod=mod)],
            capture_output=True,
            text=True,
            env={**_clean_env(), "PYTHONPATH": str(ROOT)},
            check=True,
        ).stdout.split()
        assert out == ["PASSIVE", "False"], mod  # set, and before torch was imported


def test_a_wait_policy_already_in_the_environment_wins():
    out = subprocess.run(
        [sys.executable, "-c", "import os, recaudit; print(os.environ['OMP_WAIT_POLICY'])"],
        capture_output=True,
        text=True,
        env={**_clean_env(), "PYTHONPATH": str(ROOT), "OMP_WAIT_POLICY": "ACTIVE"},
        check=True,
    ).stdout.strip()
    assert out == "ACTIVE"


def test_torch_threads_sets_and_restores():
    import torch

    from simulator.threads import TRAIN_THREADS, torch_threads, training_threads

    old = torch.get_num_threads()
    with torch_threads(2):
        assert torch.get_num_threads() == 2
        with training_threads():
            assert torch.get_num_threads() == TRAIN_THREADS
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == old


def test_simulator_bench_measures_quiet_and_contended_with_the_same_result():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "simulator.py"), *SMALL_BENCH, "--contention"],
        capture_output=True,
        text=True,
        env=_clean_env(),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["omp_wait_policy"] == "PASSIVE"
    assert out["contended_same_result"] is True
    # both times are printed to 4 decimals and the ratio to 3, from the unrounded times:
    # a run of a few milliseconds is off by more than 1% after rounding (CI: 1.169
    # printed against 0.0081 / 0.0070 = 1.157), so the ratio is checked against the
    # range the rounded times allow
    s, c, half = out["seconds"], out["contended_seconds"], 0.5e-4
    low, high = (s - half) / (c + half), (s + half) / (c - half)
    assert low - 0.0005 <= out["contended_over_quiet"] <= high + 0.0005, out


@pytest.mark.slow
@pytest.mark.ray
def test_embedded_ray_workers_inherit_the_wait_policy(embedded_ray):
    from auditor.executor import run_jobs

    assert run_jobs(_env, ["OMP_WAIT_POLICY"], ray_address="local") == ["PASSIVE"]


def _env(name: str) -> str | None:
    return os.environ.get(name)
