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


@pytest.mark.slow
def test_ui_serves_the_store_and_stops(recaudit_bin, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["RECAUDIT_HOME"] = str(tmp_path / "home")
    port = free_port()
    proc = subprocess.Popen(
        [recaudit_bin, "ui", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        first = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}" in first and "mlflow.db" in first
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert proc.poll() is None, "the UI exited"
                assert time.monotonic() < deadline, "the UI did not come up"
                time.sleep(1)
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=5", timeout=10
        ) as r:
            assert r.status == 200 and b"experiments" in r.read()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)


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
