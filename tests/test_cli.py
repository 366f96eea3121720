"""The command line as a user meets it: real subprocesses, exit codes, outputs."""

from __future__ import annotations

import json
import subprocess

import pandas as pd
import pytest


def run(bin_, *args, check=False):
    proc = subprocess.run([bin_, *args], capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_scenarios_and_policies_list_one_line_each(recaudit_bin):
    from recommenders.registry import POLICIES
    from simulator.scenarios import SCENARIOS

    out = run(recaudit_bin, "scenarios", check=True).stdout.strip().splitlines()
    assert [line.split()[0] for line in out] == list(SCENARIOS)
    data = json.loads(run(recaudit_bin, "scenarios", "--json", check=True).stdout)
    assert {d["id"] for d in data} == set(SCENARIOS)
    assert all(len(d["fingerprint"]) == 16 for d in data)
    out = run(recaudit_bin, "policies", check=True).stdout.strip().splitlines()
    assert [line.split()[0] for line in out] == list(POLICIES)


def test_simulate_json_is_reproducible_and_pairs_the_natural_arm(recaudit_bin):
    args = [
        "simulate",
        "--scenario",
        "topics-tiny-v1",
        "--policy",
        "random",
        "--seeds",
        "2",
        "--json",
    ]
    a = json.loads(run(recaudit_bin, *args, check=True).stdout)
    b = json.loads(run(recaudit_bin, *args, check=True).stdout)
    assert a["arms"] == b["arms"]
    # the policy is the natural policy itself: both arms are identical, induced shift 0
    assert a["arms"]["policy"] == a["arms"]["natural"]
    assert a["arms"]["policy"]["induced_shift"]["per_seed"] == [0.0, 0.0]
    assert a["seeds"] == [0, 1] and a["users"] == 50 and a["steps"] == 5
    assert a["backend"] == "in-process"


def test_simulate_table_and_out_dir(recaudit_bin, tmp_path):
    out = tmp_path / "run"
    proc = run(
        recaudit_bin,
        "simulate",
        "--scenario",
        "topics-tiny-v1",
        "--policy",
        "oracle-greedy",
        "--users",
        "20",
        "--steps",
        "4",
        "--seeds",
        "2",
        "--out",
        str(out),
        "--full",
        check=True,
    )
    assert "induced_shift (preference-space distance)" in proc.stdout
    assert "oracle-greedy" in proc.stdout
    summary = pd.read_parquet(out / "summary.parquet")
    assert len(summary) == 2 * 2 * 4  # seeds x arms x steps
    per_user = pd.read_parquet(out / "per_user.parquet")
    assert len(per_user) == 2 * 2 * 20
    traj = pd.read_parquet(out / "trajectories.parquet")
    assert len(traj) == 2 * 2 * 5 * 20  # seeds x arms x (steps + 1) x users
    result = json.loads((out / "result.json").read_text())
    spec = json.loads((out / "spec.json").read_text())
    assert spec["scenario"]["id"] == "topics-tiny-v1" and spec["seeds"] == [0, 1]
    # the per-user mean equals the reported mean induced shift
    pu = per_user[per_user.arm == "policy"].groupby("seed").induced_shift.mean().tolist()
    assert pu == pytest.approx(result["arms"]["policy"]["induced_shift"]["per_seed"], rel=1e-5)
    # a second run into the same directory is refused: nothing stored is lost
    again = run(
        recaudit_bin,
        "simulate",
        "--scenario",
        "topics-tiny-v1",
        "--policy",
        "random",
        "--out",
        str(out),
    )
    assert again.returncode == 2 and "already holds results" in again.stderr
    assert json.loads((out / "result.json").read_text()) == result


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--scenario", "nope", "--policy", "random"], "unknown scenario 'nope'"),
        (["--scenario", "topics-tiny-v1", "--policy", "nope"], "unknown policy 'nope'"),
        (
            ["--scenario", "topics-tiny-v1", "--policy", "random", "--users", "0"],
            "must be positive",
        ),
        (
            ["--scenario", "topics-tiny-v1", "--policy", "random", "--steps", "-2"],
            "must be positive",
        ),
        (
            ["--scenario", "topics-tiny-v1", "--policy", "random", "--seeds", "x"],
            "positive integer",
        ),
        (
            ["--scenario", "topics-tiny-v1", "--policy", "random", "--seed", "nan"],
            "non-negative integer",
        ),
        (["--scenario", "topics-tiny-v1", "--policy", "random", "--users", "1000000000"], "GiB"),
        (["--scenario", "topics-tiny-v1", "--policy", "random", "--full"], "--out"),
        (
            ["--scenario", "topics-tiny-v1", "--policy", "random", "--device", "tpu"],
            "invalid choice",
        ),
        (["--policy", "random"], "required"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(recaudit_bin, args, message):
    proc = run(recaudit_bin, "simulate", *args)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stdout == ""


def test_cuda_without_gpu_is_exit_2(recaudit_bin):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    proc = run(
        recaudit_bin,
        "simulate",
        "--scenario",
        "topics-tiny-v1",
        "--policy",
        "random",
        "--device",
        "cuda",
    )
    assert proc.returncode == 2 and "no CUDA device" in proc.stderr


def test_unreachable_ray_cluster_is_exit_2(recaudit_bin):
    proc = run(
        recaudit_bin,
        "simulate",
        "--scenario",
        "topics-tiny-v1",
        "--policy",
        "random",
        "--ray-address",
        "127.0.0.1:1",
    )
    assert proc.returncode == 2, proc.stderr
    assert "cannot connect to Ray" in proc.stderr and "Traceback" not in proc.stderr
