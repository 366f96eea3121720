"""`recaudit serve` as a real process on loopback: a cancel and a SIGTERM reach a
training in progress, embedded Ray listens on loopback only, and neither a SIGKILL nor
a stop leaves Ray's processes behind."""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from .service_helpers import free_port, start_group, stop_group, wait_for, wait_http

pytestmark = [pytest.mark.slow]

BIN = Path(sys.executable).parent
#: a reference whose training would run for hours
TRAINING_SPEC = {
    "scenario": "topics-tiny-v1",
    "policy": {"kind": "myopic"},
    "references": [
        {"kind": "natural"},
        {"kind": "ppo-myopic", "params": {"iterations": 100000, "users": 64, "steps": 5}},
    ],
    "users": 20,
    "steps": 3,
    "replicates": 2,
}
STOP_TIMEOUT_S = 10


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env.update(RECAUDIT_HOME=str(home), RECAUDIT_STOP_TIMEOUT_S=str(STOP_TIMEOUT_S), **extra)
    return env


def _key(env: dict[str, str], tenant: str) -> str:
    out = subprocess.run(
        [str(BIN / "recaudit"), "keys", "create", "--tenant", tenant],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return out.stdout.strip().splitlines()[-1]


def _serve(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    cmd = [str(BIN / "recaudit"), "serve", "--host", "127.0.0.1", "--port", str(port)]
    return start_group([*cmd, "--log-level", "warning"], env, log)


def _status(c: httpx.Client, aid: str) -> dict:
    return c.get(f"/v1/audits/{aid}").json()


def test_a_cancel_and_a_sigterm_reach_a_training_in_progress(tmp_path):
    """In-process executor: DELETE stops a training (it checks for a cancel every
    iteration; the service sees the cancel within half a second), and SIGTERM ends the
    process within RECAUDIT_STOP_TIMEOUT_S, the interrupted audit back in the queue."""
    env = _env(tmp_path / "home", RAY_ADDRESS="none", RECAUDIT_TRACK="0")
    key = _key(env, "acme")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _serve(env, port, tmp_path / "serve.log")
    try:
        wait_http(f"{url}/healthz", timeout=120, proc=proc)
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as c:
            aid = c.post("/v1/audits", json=TRAINING_SPEC).json()["id"]
            wait_for(lambda: "training" in _status(c, aid)["phase"], timeout=120, every=0.2)
            assert c.delete(f"/v1/audits/{aid}").status_code == 202
            body = wait_for(lambda: (b := _status(c, aid))["status"] != "running" and b, timeout=30)
            assert body["status"] == "cancelled"

            bid = c.post("/v1/audits", json=TRAINING_SPEC).json()["id"]
            wait_for(lambda: "training" in _status(c, bid)["phase"], timeout=120, every=0.2)
        proc.send_signal(signal.SIGTERM)  # to the server alone, as a supervisor does
        # uvicorn stops gracefully, then ends by the signal it caught
        assert proc.wait(STOP_TIMEOUT_S + 15) in (0, -signal.SIGTERM)
    finally:
        stop_group(proc, signal.SIGKILL)
    proc = _serve(env, port, tmp_path / "serve2.log")  # the port is free at once
    try:
        wait_http(f"{url}/healthz", timeout=120, proc=proc)
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as c:
            again = _status(c, bid)
            assert again["attempts"] == 1 and again["status"] in ("queued", "running")
            assert c.delete(f"/v1/audits/{bid}").status_code in (200, 202)
    finally:
        stop_group(proc)


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _listening(procs: list[psutil.Process]) -> list[tuple[str, str, int]]:
    out = []
    for p in procs:
        try:
            for conn in p.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    out.append((p.name(), conn.laddr.ip, conn.laddr.port))
        except psutil.NoSuchProcess:
            continue
    return out


def _loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(addr, "ipv4_mapped", None)
    return addr.is_loopback or (mapped is not None and mapped.is_loopback)


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            continue
    return out


@pytest.mark.ray
def test_embedded_ray_listens_on_loopback_and_leaves_nothing_behind(tmp_path):
    env = _env(tmp_path / "home", RECAUDIT_TRACK="0")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    first = _serve(env, port, tmp_path / "serve1.log")
    second = None
    try:
        wait_http(f"{url}/readyz", timeout=180, proc=first)
        wait_for(lambda: httpx.get(f"{url}/readyz").status_code == 200, timeout=60)
        time.sleep(5)  # Ray's agents start after ray.init returns
        tree = _tree(first.pid)
        listening = _listening(tree)
        assert len(tree) > 3 and listening
        assert [x for x in listening if not _loopback(x[1])] == [], listening

        first.kill()  # SIGKILL of the server alone: Ray's processes are orphaned
        first.wait(30)
        second = _serve(env, port, tmp_path / "serve2.log")
        wait_http(f"{url}/readyz", timeout=180, proc=second)
        # the new start ended what the killed one left
        assert _alive(tree[1:]) == []
        time.sleep(5)
        tree2 = _tree(second.pid)
        listening = _listening(tree2)
        assert [x for x in listening if not _loopback(x[1])] == [], listening

        second.send_signal(signal.SIGTERM)  # a supervisor's stop
        assert second.wait(STOP_TIMEOUT_S + 20) in (0, -signal.SIGTERM)
        assert _alive(tree2[1:]) == []
    finally:
        stop_group(first, signal.SIGKILL)
        if second is not None:
            stop_group(second, signal.SIGKILL)
