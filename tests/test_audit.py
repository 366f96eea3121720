"""The auditor: pairing, determinism, backends, MLflow records, the CLI's exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import threading

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from auditor.audit import BuiltinPolicy, Cancelled, check_spec, run_audit
from auditor.measure import checkpoints
from auditor.spec import AuditSpec, Criterion
from simulator.engine import build_environment, run_arms
from simulator.errors import SpecError
from simulator.metric_registry import gini, mean_jaccard, mean_topic_entropy
from simulator.scenarios import get_scenario
from simulator.specs import with_overrides

TINY = {"scenario": "topics-tiny-v1", "users": 40, "steps": 6, "replicates": 3}
BUILTIN_REFS = [{"kind": "natural"}, {"kind": "popularity"}, {"kind": "myopic"}]


def spec(**kw):
    data = {**TINY, "policy": {"kind": "oracle-greedy"}, "references": BUILTIN_REFS, **kw}
    return AuditSpec.model_validate(data)


def figures(report, metric):
    return {arm: report.metrics[arm][metric].per_replicate for arm in report.metrics}


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("RECAUDIT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return tmp_path / "home"


# ------------------------------------------------------------------------ calibration
def test_an_audit_of_a_policy_against_itself_has_exactly_zero_effects_and_passes():
    s = spec(
        policy={"kind": "myopic"},
        references=[{"kind": "natural"}, {"kind": "myopic", "label": "same"}],
        criteria=[
            Criterion(name=f"self-{m}", metric=m, reference="same", margin=0.0)
            for m in ("induced_shift", "polarization", "engagement", "jaccard")
        ],
    )
    report = run_audit(s, track=False).report
    same = [e for e in report.effects if e.reference == "same"]
    assert len(same) == len(report.metric_descriptions)
    for e in same:
        if e.mean is None:  # a metric with no value (none here is expected)
            continue
        assert (e.mean, e.ci_low, e.ci_high, e.p_value) == (0.0, 0.0, 0.0, None), e
        assert all(v == 0.0 for v in e.per_replicate)
    assert [c.status for c in report.criteria] == ["pass"] * 4
    assert report.verdict == "pass"


def test_without_preference_dynamics_no_policy_induces_any_shift():
    scenario = with_overrides(get_scenario("topics-tiny-v1"), {"dynamics": {"kind": "none"}})
    report = run_audit(spec(scenario=scenario.model_dump()), track=False).report
    for arm, values in figures(report, "induced_shift").items():
        assert values == [0.0, 0.0, 0.0], arm
    # natural drift still moves everyone, identically in every arm
    shifts = figures(report, "shift")
    assert all(v > 0 for v in shifts["natural"])
    assert all(shifts[arm] == shifts["natural"] for arm in shifts)


def test_separate_tasks_stay_paired_with_the_lockstep_engine():
    """Each arm runs in its own task; with common random numbers its natural twin is the
    natural arm of the same replicate, exactly as when both run in lockstep."""
    s = spec(users=64, steps=5, replicates=2)
    report = run_audit(s, track=False).report
    scenario = get_scenario("topics-tiny-v1")
    for r in range(2):
        env = build_environment(scenario)
        arms = {"policy": BuiltinPolicy("oracle-greedy")(), "natural": BuiltinPolicy("random")()}
        res = run_arms(env, arms, users=64, steps=5, seed=r, reference="natural")
        lock = float((res.arms["policy"].final - res.arms["natural"].final).norm(dim=1).mean())
        got = report.metrics["policy"]["induced_shift"].per_replicate[r]
        assert got == pytest.approx(lock, rel=1e-5)
        clicks = float(res.arms["policy"].clicks.mean())
        assert report.metrics["policy"]["cumulative_clicks"].per_replicate[r] == pytest.approx(
            clicks, rel=1e-6
        )


def test_an_audit_never_simulates_its_natural_arm_alone(monkeypatch):
    """Every other arm runs beside the natural counterfactual (common random numbers), so
    the natural arm is measured from one of those runs: 3 runs per replicate for 4 arms,
    not 4. Its figures are those of the natural policy run alone."""
    import auditor.audit as audit_mod
    from auditor.measure import ArmJob, measure_arms, run_arm

    seen: list[ArmJob] = []

    def counting(job, progress=None):
        seen.append(job)
        return measure_arms(job, progress)

    monkeypatch.setattr(audit_mod, "measure_arms", counting)
    report = run_audit(spec(), track=False).report
    assert len(seen) == 3 * 3 and "natural" not in {j.label for j in seen}
    for r in range(3):
        carriers = [j.label for j in seen if j.replicate == r and j.counterfactual_label]
        assert carriers == ["policy"]
    job = next(j for j in seen if j.replicate == 1 and j.label == "myopic")
    alone = run_arm(
        ArmJob(
            scenario=job.scenario,
            label="natural",
            factory=BuiltinPolicy("random"),
            users=job.users,
            steps=job.steps,
            seed=job.seed,
            replicate=1,
            checkpoints=job.checkpoints,
        )
    )
    for m in ("shift", "polarization", "engagement"):
        assert report.metrics["natural"][m].per_replicate[1] == alone.final[m], m


def test_the_natural_arm_rides_with_a_built_in_arm_not_a_team_s_policy():
    """A team's policy (a kind the caller resolves, e.g. a remote model) may fail; the
    natural arm is measured in a built-in arm's run when there is one."""
    from auditor.plan import plan_audit

    s = AuditSpec.model_validate(
        {**TINY, "policy": {"kind": "team-model"}, "references": BUILTIN_REFS}
    )
    plan = plan_audit(s, extra_kinds={"team-model"})
    for a in plan.arms:
        a.factory = BuiltinPolicy("myopic")
    jobs = plan.jobs()
    assert [j.label for j in jobs if j.counterfactual_label] == ["popularity"] * 3
    assert len(jobs) == 3 * 3


def test_same_seed_same_numbers_and_another_seed_other_numbers():
    a = run_audit(spec(), track=False).report
    b = run_audit(spec(), track=False).report
    c = run_audit(spec(seed=5), track=False).report
    strip = {"provenance", "id"}
    assert a.model_dump(exclude=strip) == b.model_dump(exclude=strip)
    assert figures(a, "engagement") != figures(c, "engagement")
    assert a.provenance.fingerprint == b.provenance.fingerprint != c.provenance.fingerprint


@pytest.mark.ray
@pytest.mark.slow
def test_in_process_and_embedded_ray_give_identical_reports(embedded_ray):
    s = spec(users=50, replicates=2)
    local = run_audit(s, track=False).report
    on_ray = run_audit(s, track=False, ray_address="local").report
    strip = {"provenance", "id"}
    assert local.model_dump(exclude=strip) == on_ray.model_dump(exclude=strip)
    assert on_ray.provenance.executor == "ray-local"


@pytest.mark.ray
@pytest.mark.slow
def test_the_automatic_backend_choice_gives_the_same_report_either_way(embedded_ray, monkeypatch):
    """Chosen by the work: this small audit runs in process; with the threshold at zero
    the same audit goes to embedded Ray; the reports are identical and say why."""
    from auditor import executor

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    s = spec(users=50, replicates=2)
    small = run_audit(s, track=False, ray_address=executor.AUTO).report
    assert small.provenance.executor == "in-process"
    assert "nothing to train" in small.provenance.executor_reason
    monkeypatch.setattr(executor, "IN_PROCESS_MAX_USER_STEPS", 0)
    large = run_audit(s, track=False, ray_address=executor.AUTO).report
    assert large.provenance.executor == "ray-local"
    assert "worth spreading" in large.provenance.executor_reason
    strip = {"provenance", "id"}
    assert small.model_dump(exclude=strip) == large.model_dump(exclude=strip)


@pytest.mark.parametrize(
    ("requested", "env", "cores", "user_steps", "learners", "address", "why"),
    [
        (None, None, 2, 10**9, 3, None, "as asked"),
        ("local", None, 2, 1, 0, "local", "as asked"),
        ("10.0.0.1:6379", None, 2, 1, 0, "10.0.0.1:6379", "cluster given"),
        ("AUTO", "10.0.0.1:6379", 2, 1, 0, "10.0.0.1:6379", "RAY_ADDRESS"),
        ("AUTO", None, 1, 10**9, 3, None, "one core"),
        ("AUTO", None, 2, 1000, 3, "local", "3 learners to train in parallel"),
        ("AUTO", None, 2, 800_000, 0, None, "nothing to train"),
        ("AUTO", None, 2, 800_000, 1, None, "one learner to train"),
        ("AUTO", None, 2, 10_000_000, 0, "local", "worth spreading"),
    ],
)
def test_backend_choice_by_the_work(
    monkeypatch, requested, env, cores, user_steps, learners, address, why
):
    from auditor.executor import AUTO, BackendChoice

    if env is None:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
    else:
        monkeypatch.setenv("RAY_ADDRESS", env)
    choice = BackendChoice(
        AUTO if requested == "AUTO" else requested, user_steps=user_steps, cores=cores
    )
    assert choice.resolve(learners) == address
    assert why in choice.reason
    assert choice.resolve(0) == address  # decided once


def test_arms_that_retrain_in_the_loop_go_to_ray(monkeypatch):
    """RecBole policies retrain inside the simulation (seconds per arm-replicate, one core
    each): a small audit of one still spreads its replicates over the cores."""
    from auditor.executor import AUTO, BackendChoice

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    small = 943 * 50 * 2 * 8
    choice = BackendChoice(AUTO, user_steps=small, cores=2, retraining=8)
    assert choice.resolve(0) == "local"
    assert "8 arm-replicates retrain a model in the loop" in choice.reason
    assert BackendChoice(AUTO, user_steps=small, cores=2, retraining=1).resolve(0) is None
    assert BackendChoice(AUTO, user_steps=small, cores=1, retraining=8).resolve(0) is None


def test_the_plan_marks_the_arms_that_retrain_in_the_loop():
    from auditor.plan import plan_audit

    s = AuditSpec.model_validate(
        {
            "scenario": "movielens-100k-v1",
            "policy": {"kind": "recbole-sasrec"},
            "references": [{"kind": "natural"}, {"kind": "recbole-bpr"}, {"kind": "myopic"}],
            "users": 10,
            "steps": 2,
            "replicates": 2,
        }
    )
    arms = plan_audit(s).arms
    assert [(a.kind, a.retrains) for a in arms][1:] == [
        ("random", False),
        ("recbole-bpr", True),
        ("myopic", False),
    ]
    assert arms[0].retrains


# ---------------------------------------------------------------------- the report
def test_report_contents_are_consistent():
    s = spec(users=50, steps=8, replicates=3)
    report = run_audit(s, track=False).report
    assert [a.label for a in report.arms] == ["policy", "natural", "popularity", "myopic"]
    assert [a.role for a in report.arms] == ["audited", "natural", "other", "myopic"]
    assert report.arms[0].oracle is True
    # the natural arm is its own counterfactual
    assert report.metrics["natural"]["induced_shift"].per_replicate == [0.0, 0.0, 0.0]
    # per-step curves: 8 steps; induced shift at the checkpoints (every step here)
    curve = report.curves["policy"]["engagement"]
    assert curve.steps == list(range(1, 9))
    assert curve.mean[-1] is not None and curve.low[-1] <= curve.mean[-1] <= curve.high[-1]
    assert report.curves["policy"]["induced_shift"].steps == list(range(9))
    cum = report.curves["policy"]["cumulative_clicks"].mean[-1]
    assert cum == pytest.approx(report.metrics["policy"]["cumulative_clicks"].mean, rel=1e-6)
    # distributions are shares summing to 1 at every checkpoint
    dist = report.distributions["policy"]
    assert np.allclose([sum(row) for row in dist.density], 1.0)
    assert dist.steps == list(range(9)) and len(dist.bin_edges) == len(dist.density[0]) + 1
    # effects are the paired differences of the per-replicate figures
    e = next(x for x in report.effects if x.metric == "welfare" and x.reference == "natural")
    w = report.metrics
    expected = [
        p - n
        for p, n in zip(
            w["policy"]["welfare"].per_replicate, w["natural"]["welfare"].per_replicate, strict=True
        )
    ]
    assert e.per_replicate == pytest.approx(expected)
    assert e.mean == pytest.approx(np.mean(expected))
    assert e.p_value is None and e.p_holm is None  # descriptive: the criteria are the tests
    # round trip through the JSON schema
    from auditor.report import AuditReport

    again = AuditReport.model_validate_json(report.to_json())
    assert again == report
    assert json.loads(report.to_json())["schema"] == "recaudit.audit-report/v1"


def test_three_replicates_are_too_few_for_a_verdict_on_a_real_difference():
    report = run_audit(spec(), track=False).report
    pol = next(c for c in report.criteria if c.name == "polarization-vs-natural")
    assert pol.status == "inconclusive" and "at least 5" in pol.explanation
    skipped = [c for c in report.criteria if c.status == "skipped"]
    assert skipped == []  # myopic is among the references


def test_a_default_criterion_whose_reference_is_absent_is_inconclusive():
    s = spec(references=[{"kind": "natural"}])
    report = run_audit(s, track=False).report
    crit = {c.name: c.status for c in report.criteria}
    assert crit["induced-shift-vs-myopic"] == "inconclusive"


def test_cancelling_stops_the_audit(home):
    ev = threading.Event()
    ev.set()
    with pytest.raises(Cancelled):
        run_audit(spec(), cancel=ev)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"policy": {"kind": "nope"}}, "unknown policy 'nope'"),
        ({"policy": {"kind": "natural"}}, "cannot be 'natural'"),
        ({"policy": {"kind": "random", "params": {"x": 1}}}, "takes no parameters"),
        ({"policy": {"kind": "ppo", "params": {"iterations": 0}}}, "iterations"),
        ({"scenario": "nope-v1"}, "unknown scenario"),
    ],
)
def test_check_spec_refuses_bad_audits_with_a_clear_message(change, message):
    with pytest.raises(SpecError, match=message):
        check_spec(spec(**change))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"references": [{"kind": "random"}, {"kind": "random"}]}, "used twice"),
        ({"references": [{"kind": "random", "label": "policy"}]}, "reserved"),
        ({"metrics": ["nope"]}, "unknown metric"),
        ({"users": 0}, "greater than or equal"),
        ({"alpha": float("nan")}, "finite"),
        ({"colour": "red"}, "Extra inputs"),
    ],
)
def test_the_schema_refuses_bad_specs(change, message):
    with pytest.raises(ValidationError, match=message):
        spec(**change)


def test_fingerprint_covers_the_resolved_scenario():
    a = spec()
    b = spec(scenario=get_scenario("topics-tiny-v1").model_dump())
    assert a.fingerprint() == b.fingerprint()
    changed = with_overrides(get_scenario("topics-tiny-v1"), {"dynamics.delta": 0.2})
    assert spec(scenario=changed.model_dump()).fingerprint() != a.fingerprint()


# --------------------------------------------------------------------------- MLflow
def test_mlflow_holds_a_parent_run_a_child_per_arm_and_the_report(home, tmp_path):
    from mlflow.tracking import MlflowClient

    from dashboards.report import write_report

    result = run_audit(spec(), render=write_report, out_dir=tmp_path / "out")
    client = MlflowClient(tracking_uri=f"sqlite:///{home}/mlflow.db")
    parent = client.get_run(result.run_id)
    assert parent.info.status == "FINISHED"
    tags = parent.data.tags
    assert tags["recaudit.audit"] == "true" and tags["recaudit.policy"] == "oracle-greedy"
    assert tags["recaudit.fingerprint"] == result.report.provenance.fingerprint
    assert tags["recaudit.verdict"] == result.report.verdict
    assert tags["recaudit.code_version"].startswith("recaudit ")
    m = result.report.metrics["policy"]["induced_shift"].mean
    assert parent.data.metrics["policy/induced_shift"] == pytest.approx(m)
    exp = parent.info.experiment_id
    children = client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{result.run_id}'")
    assert sorted(c.data.tags["recaudit.arm"] for c in children) == sorted(
        a.label for a in result.report.arms
    )
    child = next(c for c in children if c.data.tags["recaudit.arm"] == "policy")
    hist = client.get_metric_history(child.info.run_id, "polarization")
    assert [p.step for p in sorted(hist, key=lambda p: p.step)] == list(range(1, 7))
    names = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"report.json", "report.html", "figures"} <= names
    local = client.download_artifacts(result.run_id, "report.json", str(tmp_path))
    assert json.loads(open(local).read())["provenance"]["mlflow_run_id"] == result.run_id
    assert (tmp_path / "out" / "report.html").is_file()

    # the cross-audit view finds it
    from dashboards.history import audit_history

    hist = audit_history(policy="oracle-greedy")
    assert list(hist["run_id"]) == [result.run_id]
    assert hist["verdict"].iloc[0] == result.report.verdict


def test_cli_history_lists_audits_oldest_first(recaudit_bin, home):
    for seed in ("0", "1"):
        proc = run_cli(
            recaudit_bin,
            home,
            "audit",
            "--scenario",
            "topics-tiny-v1",
            "--policy",
            "popularity",
            "--references",
            "natural",
            "--replicates",
            "2",
            "--seed",
            seed,
            "--in-process",
            "--no-progress",
        )
        assert proc.returncode == 3, proc.stderr
    proc = run_cli(recaudit_bin, home, "history", "--policy", "popularity", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert len(rows) == 2 and rows[0]["started"] <= rows[1]["started"]
    assert {r["verdict"] for r in rows} == {"inconclusive"}
    empty = run_cli(recaudit_bin, home, "history", "--policy", "ppo")
    assert empty.returncode == 0 and "no audits recorded" in empty.stdout


# ------------------------------------------------------------------ measurements
def test_gini_of_exposure():
    assert gini(torch.tensor([3.0, 3.0, 3.0, 3.0])) == 0.0
    assert gini(torch.tensor([0.0, 0.0, 0.0, 4.0])) == pytest.approx(0.75)
    assert gini(torch.zeros(5)) == 0.0


def test_mean_jaccard_by_hand():
    consumed = torch.tensor(
        [[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]], dtype=torch.bool
    )
    pairs = torch.tensor([[0, 1], [2, 3], [0, 4]])
    # {0,1} vs {1,2}: 1/3; both empty: left out; {0,1} vs {0}: 1/2
    assert mean_jaccard(consumed, pairs) == pytest.approx((1 / 3 + 1 / 2) / 2)


def test_topic_entropy_by_hand():
    counts = torch.tensor([[2.0, 2.0, 0.0], [4.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert mean_topic_entropy(counts) == pytest.approx((1.0 + 0.0) / 2)


def test_checkpoints_keep_every_step_when_they_fit_and_both_ends_always():
    assert checkpoints(10, 100, 4) == list(range(11))
    few = checkpoints(1000, 1_000_000, 16)
    assert few[0] == 0 and few[-1] == 1000 and len(few) == 11


# ---------------------------------------------------------------------------- CLI
def run_cli(bin_, home, *args):
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env["RECAUDIT_HOME"] = str(home)
    return subprocess.run([bin_, *args], capture_output=True, text=True, timeout=600, env=env)


FAST = ["--in-process", "--no-track", "--no-progress"]


def test_cli_exit_status_is_1_on_flag_and_prints_the_table(recaudit_bin, home):
    proc = run_cli(
        recaudit_bin,
        home,
        "audit",
        "--scenario",
        "polarity-1d-v1",
        "--policy",
        "oracle-greedy",
        "--references",
        "natural,myopic",
        "--users",
        "200",
        "--steps",
        "15",
        "--replicates",
        "5",
        *FAST,
    )
    assert proc.returncode == 1, proc.stderr
    assert "verdict: FLAG" in proc.stdout and "polarization-vs-natural" in proc.stdout


def test_cli_exit_status_0_on_pass_from_a_yaml_spec_with_json_output(recaudit_bin, home, tmp_path):
    f = tmp_path / "audit.yaml"
    f.write_text(
        "scenario: topics-tiny-v1\n"
        "policy: {kind: popularity}\n"
        "references: [{kind: natural}, {kind: popularity, label: same}]\n"
        "users: 30\nsteps: 4\nreplicates: 2\n"
        "criteria: [{name: self, metric: induced_shift, reference: same, margin: 0}]\n"
    )
    proc = run_cli(recaudit_bin, home, "audit", "--spec", str(f), "--json", *FAST)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["verdict"] == "pass" and report["users"] == 30


def test_cli_exit_status_3_when_inconclusive_and_out_writes_files(recaudit_bin, home, tmp_path):
    out = tmp_path / "out"
    proc = run_cli(
        recaudit_bin,
        home,
        "audit",
        "--scenario",
        "topics-tiny-v1",
        "--policy",
        "oracle-greedy",
        "--references",
        "natural",
        "--replicates",
        "2",
        "--out",
        str(out),
        *FAST,
    )
    assert proc.returncode == 3, proc.stderr
    assert "verdict: INCONCLUSIVE" in proc.stdout
    assert json.loads((out / "report.json").read_text())["verdict"] == "inconclusive"
    assert (out / "report.html").read_text().count("data:image/png;base64,") >= 4


@pytest.mark.parametrize(
    "args, message",
    [
        (["--scenario", "topics-tiny-v1", "--policy", "nope"], "unknown policy 'nope'"),
        (["--scenario", "topics-tiny-v1"], "give --spec FILE, or --scenario and --policy"),
        (["--spec", "missing.yaml"], "no such file"),
        (["--scenario", "topics-tiny-v1", "--policy", "ppo[iterations=-1]"], "iterations"),
        (["--scenario", "topics-tiny-v1", "--policy", "random", "--replicates", "1"], "replicates"),
        (["--scenario", "topics-tiny-v1", "--policy", "random[", "--users", "5"], "cannot read"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(recaudit_bin, home, args, message):
    proc = run_cli(recaudit_bin, home, "audit", *args, *FAST)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_cli_refuses_a_spec_that_is_not_a_mapping(recaudit_bin, home, tmp_path):
    f = tmp_path / "bad.json"
    f.write_text("[1, 2]")
    proc = run_cli(recaudit_bin, home, "audit", "--spec", str(f), *FAST)
    assert proc.returncode == 2 and "expected a mapping" in proc.stderr


# ------------------------------------------------------------- reference learners
@pytest.mark.slow
def test_reference_learners_come_from_the_trained_policy_cache(home):
    from mlflow.tracking import MlflowClient

    learner = {"kind": "ppo", "params": {"iterations": 2, "users": 32}}
    s = spec(references=[{"kind": "natural"}, learner], replicates=2)
    first = run_audit(s, track=True)
    second = run_audit(s, track=True)
    client = MlflowClient(tracking_uri=f"sqlite:///{home}/mlflow.db")
    exp = client.get_experiment_by_name("recaudit-training")
    assert len(client.search_runs([exp.experiment_id])) == 1  # trained once
    a = next(x for x in first.report.arms if x.kind == "ppo")
    b = next(x for x in second.report.arms if x.kind == "ppo")
    assert a.trained_run_id == b.trained_run_id is not None
    assert first.report.metrics["ppo"] == second.report.metrics["ppo"]


def test_progress_rises_to_one_through_named_phases():
    seen = []
    run_audit(spec(), track=False, progress=lambda f, phase: seen.append((f, phase)))
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
    # one report per finished run: 3 replicates x the 3 arms other than the natural one
    # (measured in the policy's run)
    assert sum(1 for _, p in seen if p.startswith("simulated ")) == 9
    assert seen[-1][1] == "done"
