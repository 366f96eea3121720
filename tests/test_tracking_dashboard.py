"""MLflow as a dashboard: the audit's run exists from the start (RUNNING), ends FAILED
or KILLED when the audit does, carries a few headline metrics, every figure as tables,
and the HTML report as an artifact."""

from __future__ import annotations

import json
import threading
import time

import pytest

from auditor import tracking
from auditor.audit import Cancelled, run_audit
from auditor.spec import AuditSpec

pytestmark = pytest.mark.slow  # three small audits tracked in MLflow

SPEC = {
    "scenario": "topics-tiny-v1",
    "users": 12,
    "steps": 3,
    "replicates": 2,
    "policy": {"kind": "myopic"},
    "references": [{"kind": "natural"}, {"kind": "popularity"}],
}


@pytest.fixture()
def client(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("RECAUDIT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv(tracking.PUBLIC_URL_ENV, raising=False)
    return MlflowClient(tracking_uri=tracking.tracking_uri())


def _audit_runs(client):
    exp = client.get_experiment_by_name(tracking.EXPERIMENT_AUDIT)
    runs = client.search_runs([exp.experiment_id], "tags.`recaudit.audit` = 'true'")
    return exp, runs


def test_the_audit_run_is_live_from_the_start_and_keeps_few_metrics(client):
    from dashboards.report import write_report

    seen: list[tuple[str, str]] = []

    def progress(fraction: float, phase: str) -> None:
        if fraction == 0.0:  # before any work: the run is already there, RUNNING
            _, runs = _audit_runs(client)
            seen.append((runs[0].info.status, str(int(time.time() * 1000))))

    result = run_audit(AuditSpec.model_validate(SPEC), progress=progress, render=write_report)
    assert [s for s, _ in seen] == ["RUNNING"]
    exp, runs = _audit_runs(client)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert [r.info.run_id for r in runs] == [result.run_id]
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.start_time <= int(seen[0][1])  # the duration covers the whole audit
    assert run.data.tags["recaudit.verdict"] == result.report.verdict
    metrics = run.data.metrics
    report = result.report
    assert metrics["policy/induced_shift"] == pytest.approx(
        report.metrics["policy"]["induced_shift"].mean
    )
    for c in report.criteria:
        assert metrics[f"criterion/{c.name}/margin"] == c.margin
        if c.estimate is not None:
            assert metrics[f"criterion/{c.name}/estimate"] == pytest.approx(c.estimate)
    n_figures = sum(len(m) for m in report.metrics.values()) + 3 * len(report.effects)
    assert len(metrics) <= 5 + 7 * len(report.criteria) < n_figures / 3
    # everything else is in the tables; the report opens from the artifacts
    names = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"report.html", "report.json", "tables"} <= names
    tables = {a.path for a in client.list_artifacts(result.run_id, "tables")}
    assert tables == {"tables/metrics.json", "tables/effects.json"}
    local = client.download_artifacts(result.run_id, "tables/metrics.json")
    table = json.loads(open(local).read())
    assert table["columns"] == ["arm", "metric", "mean", "sd", "ci_low", "ci_high"]
    assert len(table["data"]) == sum(len(m) for m in report.metrics.values())
    # arms' runs hold per-step curves only, no single-value charts
    children = client.search_runs(
        [exp.experiment_id], f"tags.`mlflow.parentRunId` = '{result.run_id}'"
    )
    assert len(children) == len(report.arms)
    assert not any(k.startswith("final/") for c in children for k in c.data.metrics)


def test_a_failed_audit_is_visible_as_failed(client):
    def render(report, directory):
        raise RuntimeError("rendering broke")

    with pytest.raises(RuntimeError, match="rendering broke"):
        run_audit(AuditSpec.model_validate(SPEC), render=render)
    _, runs = _audit_runs(client)
    assert [r.info.status for r in runs] == ["FAILED"]
    assert runs[0].info.end_time is not None


def test_a_cancelled_audit_is_killed(client):
    cancel = threading.Event()

    def progress(fraction: float, phase: str) -> None:
        if phase.startswith("simulated "):
            cancel.set()  # cancelled mid-audit

    with pytest.raises(Cancelled):
        run_audit(AuditSpec.model_validate(SPEC), progress=progress, cancel=cancel)
    _, runs = _audit_runs(client)
    assert [r.info.status for r in runs] == ["KILLED"]


def test_a_killed_attempts_run_is_closed_when_the_audit_runs_again(client, tmp_path):
    """A process killed mid-audit (os._exit, as kill -9) leaves its run RUNNING; when the
    service runs the audit again under the same id, the dead attempt's run is closed
    KILLED and names the run that replaced it."""
    import os
    import subprocess
    import sys

    audit_id = "a00000000000000ab"
    script = f"""
import json, os
from auditor.audit import run_audit
from auditor.spec import AuditSpec

def progress(fraction, phase):
    if phase.startswith("simulated "):
        os._exit(9)

run_audit(AuditSpec.model_validate(json.loads({json.dumps(json.dumps(SPEC))})),
          audit_id={audit_id!r}, progress=progress)
"""
    env = {**os.environ, "RECAUDIT_HOME": str(tmp_path / "home")}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=root, timeout=300)
    assert done.returncode == 9
    _, runs = _audit_runs(client)
    assert [r.info.status for r in runs] == ["RUNNING"]  # what the dead process left
    dead = runs[0].info.run_id

    run_audit(AuditSpec.model_validate(SPEC), audit_id=audit_id)
    _, runs = _audit_runs(client)
    status = {r.info.run_id: r.info.status for r in runs}
    assert status.pop(dead) == "KILLED"
    ((new, new_status),) = status.items()
    assert new_status == "FINISHED"
    closed = client.get_run(dead)
    assert closed.data.tags["recaudit.interrupted"] == f"re-run as {new}"
    assert closed.info.end_time is not None
