"""`recaudit train` and the trained-policy cache, against a real SQLite MLflow store."""

from __future__ import annotations

import json
import math
import os
import subprocess

import pytest

TINY_ARGS = ["--scenario", "topics-tiny-v1", "--users", "32", "--iterations", "2"]


@pytest.fixture()
def home(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env["RECAUDIT_HOME"] = str(tmp_path / "home")
    return env


def run(bin_, env, *args):
    return subprocess.run([bin_, *args], capture_output=True, text=True, timeout=600, env=env)


def client(env):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{env['RECAUDIT_HOME']}/mlflow.db")


def test_train_logs_params_metrics_policy_and_registers(recaudit_bin, home):
    proc = run(recaudit_bin, home, "train", "--policy", "ppo", *TINY_ARGS, "--seed", "7", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["registered_model"] == "recaudit.topics-tiny-v1.ppo" and out["version"] == 1
    assert 0 <= out["final_engagement"] <= 1 and out["final_induced_shift"] >= 0
    assert out["env_steps_per_s"] > 0 and out["config"]["seed"] == 7
    c = client(home)
    run_ = c.get_run(out["run_id"])
    assert run_.info.status == "FINISHED"
    assert run_.data.params["ppo.gamma"] == "0.99" and run_.data.params["kind"] == "ppo"
    hist = c.get_metric_history(out["run_id"], "charts/clicks_per_user_step")
    assert [m.step for m in hist] == [0, 1]  # one point per iteration
    assert run_.data.metrics["final/engagement"] == pytest.approx(out["final_engagement"])
    files = {f.path for f in c.list_artifacts(out["run_id"], "policy")}
    assert files == {"policy/policy.json", "policy/policy.safetensors"}
    versions = c.search_model_versions("name='recaudit.topics-tiny-v1.ppo'")
    assert [v.run_id for v in versions] == [out["run_id"]]


def test_simulate_reuses_a_trained_policy_instead_of_retraining(recaudit_bin, home, monkeypatch):
    """resolve_bundle finds a finished run by fingerprint; only a miss trains."""
    monkeypatch.setenv("RECAUDIT_HOME", home["RECAUDIT_HOME"])
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from auditor import train as train_mod
    from simulator.scenarios import get_scenario

    spec = get_scenario("topics-tiny-v1")
    cfg = train_mod.default_config("ppo", users=32, iterations=2)
    first, run1 = train_mod.resolve_bundle("ppo", spec, cfg)
    calls = []
    monkeypatch.setattr(train_mod, "train_many", lambda *a, **k: calls.append(1))
    second, run2 = train_mod.resolve_bundle("ppo", spec, cfg)
    assert calls == [] and run1 == run2 and first.weights == second.weights
    other = train_mod.default_config("ppo", users=32, iterations=2, seed=1)
    with pytest.raises(TypeError):  # a different config misses the cache and would train
        train_mod.resolve_bundle("ppo", spec, other)
    assert calls == [1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--policy", "nope", "--scenario", "topics-tiny-v1"], "unknown policy 'nope'"),
        (["--policy", "random", "--scenario", "topics-tiny-v1"], "needs no training"),
        (["--policy", "ppo", "--scenario", "topics-tiny-v1", "--gamma", "1.5"], "invalid gamma"),
        (
            ["--policy", "ppo", "--scenario", "topics-tiny-v1", "--penalty-weight", "-1"],
            "invalid penalty_weight",
        ),
        (["--policy", "ppo", "--scenario", "topics-tiny-v1", "--gamma", "nan"], "must be finite"),
        (
            ["--policy", "ppo", "--scenario", "topics-tiny-v1", "--sweep", "bogus=1,2"],
            "unknown setting 'bogus'",
        ),
        (
            ["--policy", "ppo", "--scenario", "topics-tiny-v1", "--sweep", "penalty_weight"],
            "NAME=V1,V2",
        ),
        (["--policy", "ppo", "--scenario", "nope-v1"], "unknown scenario"),
    ],
)
def test_train_bad_input_is_exit_2(recaudit_bin, home, args, message):
    proc = run(recaudit_bin, home, "train", *args)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
@pytest.mark.ray
def test_sweep_runs_members_on_ray_as_child_runs(recaudit_bin, home):
    proc = run(
        recaudit_bin,
        home,
        "train",
        "--policy",
        "ppo-distance",
        *TINY_ARGS,
        "--sweep",
        "penalty_weight=0,0.5",
        "--ray",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    members = json.loads(proc.stdout)["members"]
    assert [m["config"]["penalty_weight"] for m in members] == [0.0, 0.5]
    c = client(home)
    parents = {c.get_run(m["run_id"]).data.tags.get("mlflow.parentRunId") for m in members}
    assert len(parents) == 1 and None not in parents
    assert c.get_run(parents.pop()).info.status == "FINISHED"
    # weight 0 of the distance penalty is the unpenalized learner: same numbers in process
    single = json.loads(
        run(recaudit_bin, home, "train", "--policy", "ppo", *TINY_ARGS, "--json").stdout
    )
    assert single["final_engagement"] == members[0]["final_engagement"]


# ------------------------------------------------------------ reproducible across threads
def _repro_job():
    from auditor.train import TrainJob, default_config
    from simulator.scenarios import get_scenario

    cfg = default_config("ppo", users=256, iterations=2, epochs=1, minibatches=2)
    return TrainJob(kind="ppo", scenario=get_scenario("topics-tiny-v1"), config=cfg, eval_users=16)


def _weights_hash(job) -> str:
    import hashlib

    from auditor.train import run_training

    return hashlib.sha256(run_training(job).bundle.weights).hexdigest()


def test_trained_weights_do_not_depend_on_the_thread_count():
    """1 and 2 torch threads in process give the same weights (they differed before
    training fixed its thread count), and the caller's thread count is restored."""
    import torch

    old = torch.get_num_threads()
    job = _repro_job()
    try:
        torch.set_num_threads(1)
        one = _weights_hash(job)
        torch.set_num_threads(2)
        two = _weights_hash(job)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(old)
    assert one == two


def test_training_evaluation_is_what_simulate_reports_for_the_trained_policy():
    """The evaluation logged as ``final/<metric>`` is ``recaudit simulate``'s figures of
    the same trained policy on the same users and seed, every registry metric of them."""
    from auditor.measure import run_arm
    from auditor.plan import BuiltinPolicy
    from auditor.simulate import simulation_jobs
    from auditor.train import EVAL_SEED_OFFSET, run_training
    from simulator.metric_registry import REGISTRY

    job = _repro_job()
    out = run_training(job)
    seed = job.config.seed + EVAL_SEED_OFFSET
    [both] = simulation_jobs(
        job.scenario,
        BuiltinPolicy("ppo", out.bundle.config, out.bundle.weights),
        users=job.eval_users,
        steps=int(out.bundle.config.get("horizon") or job.scenario.default_steps),
        seeds=[seed],
    )
    sim = run_arm(both).final
    assert list(sim) == list(REGISTRY)
    assert list(out.evaluation) == [f"final/{m}" for m in REGISTRY]
    for m in REGISTRY:
        want, got = sim[m], out.evaluation[f"final/{m}"]
        assert got == want or (math.isnan(got) and math.isnan(want)), m


@pytest.mark.slow
@pytest.mark.ray
def test_trained_weights_on_ray_equal_in_process(embedded_ray):
    from auditor.executor import run_jobs

    job = _repro_job()
    [on_ray] = run_jobs(_weights_hash, [job], ray_address="local")
    assert on_ray == _weights_hash(job)


# ------------------------------------------------------------------- training progress
def test_train_progress_phase_counts_iterations_and_estimates_time_left(monkeypatch):
    from auditor import train

    jobs = [_repro_job(), _repro_job().model_copy(update={"kind": "ppo-myopic"})]
    clock = iter([100.0, 110.0, 120.0])
    monkeypatch.setattr(train.time, "monotonic", lambda: next(clock))
    tp = train.TrainProgress(jobs)  # starts at t=100
    assert tp.seconds_left() is None  # t not read yet: nothing done
    tp.update(0, 1)
    assert tp.fraction == 0.25
    assert tp.seconds_left() == 30.0  # 1 of 4 iterations in 10 s: 3 more take 30 s
    assert (
        tp.phase()
        == (
            "training 2 learners (ppo 1/2, ppo-myopic 0/2): 1/4 iterations, about 60 s left"  # read at t=120
        )
    )


def test_an_audit_that_must_train_shows_the_learner_and_its_iterations(home, monkeypatch):
    from auditor.audit import run_audit
    from auditor.spec import AuditSpec

    monkeypatch.setenv("RECAUDIT_HOME", home["RECAUDIT_HOME"])
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    spec = AuditSpec.model_validate(
        {
            "scenario": "topics-tiny-v1",
            "policy": {"kind": "myopic"},
            "references": [
                {"kind": "natural"},
                {"kind": "ppo-myopic", "params": {"users": 32, "iterations": 3}},
            ],
            "users": 20,
            "steps": 3,
            "replicates": 2,
        }
    )
    seen: list[tuple[float, str]] = []
    run_audit(spec, track=False, progress=lambda f, p: seen.append((f, p)))
    training = [p for _, p in seen if p.startswith("training 1 learner (")]
    assert training[0].startswith("training 1 learner (ppo-myopic 0/3): 0/3 iterations")
    assert training[-1].startswith("training 1 learner (ppo-myopic 3/3): 3/3 iterations")
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions)  # the bar never goes back
    assert max(f for f, p in seen if p.startswith("training")) == 0.5


@pytest.mark.slow
@pytest.mark.ray
def test_training_on_ray_reports_its_iterations(embedded_ray):
    from auditor.executor import run_jobs
    from auditor.train import run_training

    seen: list[tuple[int, int]] = []
    job = _repro_job()
    run_jobs(
        run_training,
        [job, job],
        ray_address="local",
        on_progress=lambda i, done: seen.append((i, done)),
    )
    assert (0, 2) in seen and (1, 2) in seen  # both learners' last iteration arrived
    assert all(0 < done <= 2 for _, done in seen)
