"""No credential, token or internal address of the tracking store reaches a tenant:
the service's links, the report's provenance, the HTML report and the CLI's messages."""

from __future__ import annotations

import os
import subprocess

import pytest

from auditor import tracking
from auditor.audit import run_audit
from auditor.spec import AuditSpec

from .service_helpers import auth, settings

SECRET_URI = "http://alice:s3cret@127.0.0.1:9/internal-mlflow?token=abc123&x=1"
TINY_ARGS = (
    *("--scenario", "topics-tiny-v1", "--policy", "myopic", "--references", "natural"),
    *("--users", "5", "--steps", "2", "--replicates", "2"),
)
LEAKS = ("alice", "s3cret", "abc123", "127.0.0.1:9", "internal-mlflow")


def _clean(text: str) -> None:
    for leak in LEAKS:
        assert leak not in text, (leak, text)


@pytest.fixture()
def credentialed(monkeypatch, tmp_path):
    monkeypatch.setenv("RECAUDIT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", SECRET_URI)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    monkeypatch.delenv(tracking.PUBLIC_URL_ENV, raising=False)


def test_redact_drops_userinfo_query_values_fragments_and_token_pairs():
    text = f"failed: {SECRET_URI}#frag, retried with password=hunter2; sqlite:///x.db"
    out = tracking.redact(text)
    assert out == (
        "failed: http://127.0.0.1:9/internal-mlflow?token=***&x=***, "
        "retried with password=***; sqlite:///x.db"
    )


def test_the_report_names_only_the_public_url_or_the_store_kind(credentialed, monkeypatch):
    assert tracking.shown_store() == "http (address not public; see RECAUDIT_PUBLIC_MLFLOW_URL)"
    assert tracking.run_link("7", "r1") is None  # no public URL: no link at all
    monkeypatch.setenv(tracking.PUBLIC_URL_ENV, "https://mlflow.example.org/")
    assert tracking.shown_store() == "https://mlflow.example.org"
    assert tracking.run_link("7", "r1") == (
        "https://mlflow.example.org/#/experiments/7/runs/r1?workflowType=machine_learning"
    )
    monkeypatch.setenv(tracking.PUBLIC_URL_ENV, "ftp://x")
    with pytest.raises(Exception, match="must be an http"):
        tracking.public_url()


def test_an_unreachable_credentialed_store_is_reported_without_its_address(credentialed):
    with pytest.raises(Exception) as info:
        tracking.check_reachable()
    _clean(str(info.value))
    assert "cannot use the MLflow tracking store (http" in str(info.value)


@pytest.mark.slow
def test_a_tracked_audit_writes_no_store_path_into_its_report(tmp_path, monkeypatch):
    """The default SQLite store lives in a server path: the report (JSON and HTML) shows
    the public URL instead."""
    from dashboards.report import render_html

    home = tmp_path / "private-home"
    monkeypatch.setenv("RECAUDIT_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv(tracking.PUBLIC_URL_ENV, "https://mlflow.example.org")
    spec = AuditSpec.model_validate(
        {
            "scenario": "topics-tiny-v1",
            "users": 10,
            "steps": 2,
            "replicates": 2,
            "policy": {"kind": "myopic"},
            "references": [{"kind": "natural"}],
        }
    )
    report = run_audit(spec, track=True).report
    assert report.provenance.tracking_uri == "https://mlflow.example.org"
    html = render_html(report, {})
    assert "https://mlflow.example.org" in html
    assert "private-home" not in report.to_json() and "private-home" not in html


def test_service_links_use_the_public_url_never_the_tracking_uri(
    credentialed, monkeypatch, tmp_path
):
    from fastapi.testclient import TestClient

    from service.app import create_app

    from .service_helpers import FakeAuditor, make_key, wait_for

    def audit_body(public: str | None) -> dict:
        if public:
            monkeypatch.setenv(tracking.PUBLIC_URL_ENV, public)
        else:
            monkeypatch.delenv(tracking.PUBLIC_URL_ENV, raising=False)
        s = settings(tmp_path / (public or "none").replace("/", "_"), track=True)
        with TestClient(create_app(s, execute=FakeAuditor(s))) as c:
            key = make_key(s, "acme")
            spec = {
                "scenario": "topics-tiny-v1",
                "policy": {"kind": "myopic"},
                "references": [{"kind": "natural"}],
                "users": 10,
                "steps": 2,
                "replicates": 2,
            }
            aid = c.post("/v1/audits", json=spec, headers=auth(key)).json()["id"]

            def done():
                body = c.get(f"/v1/audits/{aid}", headers=auth(key))
                return body if body.json()["status"] == "succeeded" else None

            resp = wait_for(done)
            listing = c.get("/v1/audits", headers=auth(key))
            _clean(resp.text + listing.text)
            return resp.json()

    assert audit_body(None)["mlflow_url"] is None
    body = audit_body("https://mlflow.example.org")
    assert body["mlflow_url"] == (
        f"https://mlflow.example.org/#/experiments/7/runs/{'r' * 32}?workflowType=machine_learning"
    )
    assert body["links"]["mlflow"] == body["mlflow_url"]


@pytest.mark.slow
def test_cli_messages_do_not_show_the_store_credentials(recaudit_bin, tmp_path):
    env = {
        **os.environ,
        "RECAUDIT_HOME": str(tmp_path),
        "MLFLOW_TRACKING_URI": SECRET_URI,
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "2",
    }
    env.pop(tracking.PUBLIC_URL_ENV, None)
    proc = subprocess.run(
        [recaudit_bin, "audit", *TINY_ARGS, "--in-process", "--no-progress"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert "cannot use the MLflow tracking store" in proc.stderr
    for leak in ("alice", "s3cret", "abc123"):
        assert leak not in proc.stdout + proc.stderr
