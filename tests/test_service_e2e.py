"""The service against real servers on loopback: `recaudit serve` under uvicorn, a Ray
cluster from `ray start --head`, an `mlflow server` on SQLite; a restart in the middle of
an audit. Every server runs in its own process group and is stopped by signalling that
group (never `ray stop`: it would end every Ray process on the machine)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from .service_helpers import free_port, start_group, stop_group, wait_for, wait_http
from .service_policy_server import PolicyServer

pytestmark = [pytest.mark.slow]

BIN = Path(sys.executable).parent
SPEC = {
    "scenario": "polarity-1d-v1",
    "policy": {"kind": "myopic"},
    "references": [{"kind": "natural"}, {"kind": "popularity"}],
    "users": 50,
    "steps": 5,
    "replicates": 2,
}


def serve_cmd(port: int) -> list[str]:
    """`recaudit serve` on loopback."""
    head = [str(BIN / "recaudit"), "serve"]
    return [*head, "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]


def create_key(env: dict[str, str], tenant: str) -> str:
    proc = subprocess.run(
        [str(BIN / "recaudit"), "keys", "create", "--tenant", tenant],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1]


def base_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env["RECAUDIT_HOME"] = str(home)
    return env


def finish(client: httpx.Client, aid: str, timeout: float = 90) -> dict:
    def done():
        b = client.get(f"/v1/audits/{aid}").json()
        return b if b["status"] in ("succeeded", "failed", "cancelled") else None

    return wait_for(done, timeout=timeout, every=0.2)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    proc = start_group(
        [
            str(BIN / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--workers",
            "1",
        ],
        {**os.environ, "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false"},
        root / "mlflow.log",
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health", timeout=120, proc=proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_group(proc)


def test_audits_over_http_on_a_ray_cluster_tracked_in_an_mlflow_server(
    tmp_path, ray_head, mlflow_server
):
    home = tmp_path / "home"
    env = base_env(home)
    key = create_key(env, "acme")
    other = create_key(env, "globex")
    port = free_port()
    with PolicyServer() as policy_server:
        env.update(
            RAY_ADDRESS=ray_head,
            MLFLOW_TRACKING_URI=mlflow_server,
            RECAUDIT_PUBLIC_MLFLOW_URL=mlflow_server,
            RECAUDIT_REMOTE_ALLOWLIST=f"127.0.0.1:{policy_server.port}",
        )
        proc = start_group(serve_cmd(port), env, tmp_path / "serve.log")
        try:
            url = f"http://127.0.0.1:{port}"
            wait_http(f"{url}/healthz", timeout=120, proc=proc)
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as c:
                ready = c.get("/readyz")
                assert ready.status_code == 200, ready.text
                assert ready.json()["checks"] == {
                    "job_store": "ok",
                    "workers": "ok",
                    "ray": "ok",
                    "mlflow": "ok",
                }
                r = c.post("/v1/audits", json=SPEC)
                assert r.status_code == 202, r.text
                aid = r.json()["id"]
                remote_spec = {
                    **SPEC,
                    "policy": {"kind": "remote", "params": {"url": policy_server.url()}},
                }
                rid = c.post("/v1/audits", json=remote_spec).json()["id"]
                body = finish(c, aid)
                assert body["status"] == "succeeded", body["error"]
                assert body["verdict"] in ("pass", "flag", "inconclusive")
                assert body["mlflow_url"] == (
                    f"{mlflow_server}/#/experiments/{body['mlflow_experiment_id']}"
                    f"/runs/{body['mlflow_run_id']}?workflowType=machine_learning"
                )
                report = c.get(f"/v1/audits/{aid}/report").json()
                assert report["id"] == aid and report["verdict"] == body["verdict"]
                assert report["provenance"]["executor"] == ray_head
                assert report["provenance"]["mlflow_run_id"] == body["mlflow_run_id"]
                html = c.get(f"/v1/audits/{aid}/report.html")
                assert html.status_code == 200 and aid in html.text
                figures = c.get(f"/v1/audits/{aid}/figures").json()["figures"]
                assert figures
                png = c.get(next(iter(figures.values())))
                assert png.content.startswith(b"\x89PNG")
                assert (
                    c.get(
                        f"/v1/audits/{aid}", headers={"Authorization": f"Bearer {other}"}
                    ).status_code
                    == 404
                )
                remote = finish(c, rid)
                assert remote["status"] == "succeeded", remote["error"]
                assert c.get("/v1/audits?status=succeeded").json()["total"] == 2
        finally:
            stop_group(proc)
        # the remote policy was called from Ray workers: 2 replicates x 5 steps
        assert {r["t"] for r in policy_server.requests} == {0, 1, 2, 3, 4}
        assert len({r["session"] for r in policy_server.requests}) == 2

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server)
    run = client.get_run(body["mlflow_run_id"])
    assert run.data.tags["recaudit.audit_id"] == aid
    assert run.data.tags["recaudit.verdict"] == body["verdict"]
    assert run.info.status == "FINISHED"
    assert "report.json" in {a.path for a in client.list_artifacts(run.info.run_id)}
    children = client.search_runs(
        [run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}'"
    )
    assert sorted(ch.data.tags["recaudit.arm"] for ch in children) == [
        "natural",
        "policy",
        "popularity",
    ]


def test_an_audit_survives_a_crash_of_the_service(tmp_path):
    """SIGKILL the service while an audit runs; the restarted service runs it again and
    it completes, once, with its report."""
    home = tmp_path / "home"
    env = {**base_env(home), "RAY_ADDRESS": "none", "RECAUDIT_TRACK": "0"}
    key = create_key(env, "acme")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    spec = {**SPEC, "users": 1000, "steps": 40}
    proc = start_group(serve_cmd(port), env, tmp_path / "serve1.log")
    try:
        wait_http(f"{url}/healthz", timeout=120, proc=proc)
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as c:
            aid = c.post("/v1/audits", json=spec, headers={"Idempotency-Key": "k1"}).json()["id"]
            wait_for(
                lambda: c.get(f"/v1/audits/{aid}").json()["progress"] > 0.1, timeout=90, every=0.1
            )
            before = c.get(f"/v1/audits/{aid}").json()
            assert before["status"] == "running" and before["attempts"] == 1
    finally:
        stop_group(proc, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL

    proc = start_group(serve_cmd(port), env, tmp_path / "serve2.log")
    try:
        wait_http(f"{url}/healthz", timeout=120, proc=proc)
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as c:
            body = finish(c, aid, timeout=120)
            assert body["status"] == "succeeded", body["error"]
            assert body["attempts"] == 2
            report = c.get(f"/v1/audits/{aid}/report").json()
            assert report["id"] == aid and report["users"] == 1000 and report["steps"] == 40
            # resubmitting with the same key gives the same audit: nothing duplicated
            again = c.post("/v1/audits", json=spec, headers={"Idempotency-Key": "k1"}).json()
            assert again["id"] == aid
            assert c.get("/v1/audits").json()["total"] == 1
    finally:
        stop_group(proc)
