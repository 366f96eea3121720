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


RAY_FLAGS = {"--in-process", "--ray", "--ray-address"}


def _flags(parser, command):
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return {
        o: (a.default, a.help) for a in sub._actions for o in a.option_strings if o in RAY_FLAGS
    }


def test_simulate_train_and_audit_share_the_ray_flags_and_their_default():
    from recaudit.cli import build_parser

    parser = build_parser()
    seen = {c: _flags(parser, c) for c in ("simulate", "train", "audit")}
    for command, flags in seen.items():
        assert set(flags) == RAY_FLAGS, command
        assert flags["--ray-address"] == seen["audit"]["--ray-address"], command
        assert flags["--in-process"][0] is False and flags["--ray"][0] is False, command


@pytest.mark.parametrize("command", ["simulate", "train", "audit"])
def test_two_ray_flags_at_once_are_refused_by_every_command(command, capsys):
    from recaudit.cli import main

    common = ("--policy", "myopic" if command != "train" else "ppo", "--scenario", "topics-tiny-v1")
    sizes = {"simulate": ("--users", "5", "--steps", "2"), "train": ("--iterations", "1")}
    argv = [command, *common, *sizes.get(command, ()), "--in-process", "--ray", "--no-progress"]
    if command == "audit":
        argv += ["--references", "natural", "--no-track"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert (
        err.strip() == "recaudit: error: --in-process, --ray and --ray-address exclude each other"
    )


def test_simulate_chooses_its_backend_by_the_work_as_audit_does(recaudit_bin):
    import os

    from auditor.executor import AUTO, BackendChoice

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    args = ("simulate", "--scenario", "topics-tiny-v1", "--policy", "random", "--json")
    proc = subprocess.run(
        [recaudit_bin, *args, "--users", "10", "--steps", "2"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    want = BackendChoice(AUTO, user_steps=10 * 2 * 2 * 3)  # users x steps x arms x seeds
    assert want.resolve() is None and out["backend"] == "in-process"
    assert out["backend_reason"] == want.reason
