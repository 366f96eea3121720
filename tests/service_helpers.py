"""Helpers of the service tests: settings on a temporary home, a scripted stand-in for
the auditor, keys, free ports and process groups."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from auditor.executor import Cancelled
from service.config import Settings
from service.keys import KeyStore
from service.runner import Outcome
from service.store import open_engine

TINY_SPEC: dict[str, Any] = {
    "scenario": "topics-tiny-v1",
    "policy": {"kind": "myopic"},
    "references": [{"kind": "natural"}, {"kind": "popularity"}],
    "users": 20,
    "steps": 3,
    "replicates": 2,
}


def settings(home: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "home": home,
        "db_url": f"sqlite:///{home / 'service.db'}",
        "reports_dir": home / "reports",
        "policies_dir": home / "policies",
        "ray_address": None,
        "track": False,
    }
    values.update(overrides)
    return Settings.model_validate(values)


def make_key(s: Settings, tenant: str) -> str:
    engine = open_engine(s.db_url)
    try:
        return KeyStore(engine).create(tenant)[1]
    finally:
        engine.dispose()


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


class FakeAuditor:
    """Stands in for run_audit: reports progress, honours cancellation like the auditor
    does (at a task boundary), writes a small report, and can be held at a gate."""

    def __init__(self, s: Settings, *, hold: bool = False, verdict: str = "pass") -> None:
        self.settings = s
        self.gate = threading.Event()
        if not hold:
            self.gate.set()
        self.verdict = verdict
        self.started: list[str] = []
        self.finished: list[str] = []
        self.fail_with: Exception | None = None
        self.lock = threading.Lock()

    def __call__(self, row: dict[str, Any], progress: Any, cancel: threading.Event) -> Outcome:
        with self.lock:
            self.started.append(row["id"])
        progress(0.1, "simulating 1/4 arms")
        while not self.gate.wait(0.02):
            if cancel.is_set():
                raise Cancelled("cancelled")
        progress(0.5, "simulated 2/4 arms")
        if self.fail_with is not None:
            raise self.fail_with
        out = self.settings.reports_dir / row["tenant"] / row["id"]
        (out / "figures").mkdir(parents=True, exist_ok=True)
        spec = json.loads(row["spec"])
        (out / "report.json").write_text(
            json.dumps({"id": row["id"], "verdict": self.verdict, "spec": spec})
        )
        (out / "report.html").write_text(f"<html><body>audit {row['id']}</body></html>")
        (out / "figures" / "shift.png").write_bytes(b"\x89PNG\r\n\x1a\nfake")
        progress(1.0, "done")
        with self.lock:
            self.finished.append(row["id"])
        return Outcome(verdict=self.verdict, exit_code=0, run_id="r" * 32, experiment_id="7")


def wait_for(predicate: Any, timeout: float = 30.0, every: float = 0.02) -> Any:
    """Poll until ``predicate()`` is truthy; its value, or AssertionError on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(every)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_group(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start ``cmd`` in its own process group (so that it and its children can be stopped
    together), its output to ``log``."""
    fh = log.open("ab")
    return subprocess.Popen(
        cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
    )


def stop_group(
    proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 30
) -> None:
    """Signal the process group of ``proc``; SIGKILL it if it outlives ``timeout``."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(10)
    # children in the group that outlived the leader
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def wait_http(url: str, timeout: float = 90.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the server exited with status {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} did not answer within {timeout} s")


@contextmanager
def real_service(tmp_path: Path, **overrides: Any) -> Iterator[Any]:
    """The real app with the real auditor (in process), one tenant's key on ``c.key``."""
    from fastapi.testclient import TestClient

    from service.app import create_app, real_execute
    from service.uploads import PolicyStore

    overrides.setdefault("remote_timeout_s", 60.0)  # a loaded test machine is slow
    s = settings(tmp_path, **overrides)
    engine = open_engine(s.db_url)
    with TestClient(
        create_app(s, execute=real_execute(s, PolicyStore(engine, s.policies_dir)))
    ) as c:
        c.key = make_key(s, "acme")  # type: ignore[attr-defined]
        yield c
    engine.dispose()


def finish_audit(c: Any, aid: str, timeout: float = 120.0) -> dict[str, Any]:
    """Poll ``aid`` until it ends; its status body."""

    def done() -> dict[str, Any] | None:
        b = c.get(f"/v1/audits/{aid}", headers=auth(c.key)).json()
        return b if b["status"] in ("succeeded", "failed", "cancelled") else None

    return wait_for(done, timeout=timeout)  # type: ignore[no-any-return]
