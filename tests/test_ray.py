"""Ray as the engine: embedded and a real local cluster give the in-process numbers."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.ray]

ARGS = [
    "simulate",
    "--scenario",
    "topics-tiny-v1",
    "--policy",
    "oracle-greedy",
    "--seeds",
    "3",
    "--json",
]


def _run(bin_, *args, env=None):
    proc = subprocess.run([bin_, *args], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def in_process(recaudit_bin):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return _run(recaudit_bin, *ARGS, env=env)


def test_run_jobs_keeps_job_order_on_ray(embedded_ray):
    from auditor.executor import run_jobs

    out = run_jobs(_slow_square, [5, 1, 4, 0, 3], ray_address="local")
    assert out == [25, 1, 16, 0, 9]


def _slow_square(x: int) -> int:
    time.sleep(0.05 * x)  # later jobs finish first
    return x * x


def test_embedded_ray_equals_in_process(recaudit_bin, in_process):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    on_ray = _run(recaudit_bin, *ARGS, "--ray", env=env)
    assert on_ray["backend"] == "ray-embedded"
    assert on_ray["arms"] == in_process["arms"]


def test_cluster_started_with_ray_start_equals_in_process(recaudit_bin, in_process, ray_head):
    """A real cluster from `ray start --head`, reached by address (variable and flag)."""
    address = ray_head
    env = {**os.environ, "RAY_ADDRESS": address}
    via_env = _run(recaudit_bin, *ARGS, env=env)
    assert via_env["backend"] == "ray-cluster"
    assert via_env["arms"] == in_process["arms"]
    env.pop("RAY_ADDRESS")
    via_flag = _run(recaudit_bin, *ARGS, "--ray-address", address, env=env)
    assert via_flag["arms"] == in_process["arms"]
