"""`recaudit ui` serves the MLflow UI on loopback against recaudit's store."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request

import pytest

from .service_helpers import free_port


def test_ui_refuses_a_busy_port(recaudit_bin, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        env = {**os.environ, "RECAUDIT_HOME": str(tmp_path)}
        proc = subprocess.run(
            [recaudit_bin, "ui", "--port", str(port)],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
    assert (
        proc.returncode == 2 and "cannot listen" in proc.stderr and "Traceback" not in proc.stderr
    )


def _mlflow(home):
    from mlflow.tracking import MlflowClient

    home.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")


@pytest.mark.slow
def test_ui_serves_the_store_links_the_latest_audit_and_stops_on_sigterm(recaudit_bin, tmp_path):
    """The UI serves recaudit's store; an experiment made without the kind tag is
    switched to the runs view, the newest audit's run is linked, and SIGTERM to
    `recaudit ui` alone (not its group) stops the MLflow server it started: the port is
    free again and no child is left."""
    import psutil

    home = tmp_path / "home"
    client = _mlflow(home)
    exp = client.create_experiment("recaudit-audits")  # as made before the tag existed
    client.create_run(exp, tags={"recaudit.audit": "true"})
    newest = client.create_run(exp, tags={"recaudit.audit": "true"}).info.run_id
    assert "mlflow.experimentKind" not in client.get_experiment(exp).tags
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["RECAUDIT_HOME"] = str(home)
    port = free_port()
    proc = subprocess.Popen(
        [recaudit_bin, "ui", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    children: list[psutil.Process] = []
    try:
        first = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}" in first and "mlflow.db" in first
        link = proc.stdout.readline().strip()
        assert link == (
            f"latest audit: http://127.0.0.1:{port}/#/experiments/{exp}/runs/{newest}"
            "?workflowType=machine_learning"
        )
        tags = _mlflow(home).get_experiment(exp).tags
        assert tags["mlflow.experimentKind"] == "custom_model_development"
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                assert proc.poll() is None, "the UI exited"
                assert time.monotonic() < deadline, "the UI did not come up"
                time.sleep(1)
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=5", timeout=10
        ) as r:
            assert r.status == 200 and b"recaudit-audits" in r.read()
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children, "the MLflow server is a child process"
        proc.send_signal(signal.SIGTERM)  # this process only, as a supervisor does
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
        _gone, alive = psutil.wait_procs(children, timeout=30)
        assert not alive, alive
        with socket.socket() as s:  # nothing listens on the port any more
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is fine
            s.bind(("127.0.0.1", port))
            s.listen()
    finally:
        if proc.poll() is None:
            proc.kill()
        for child in children:
            if child.is_running():
                child.kill()
