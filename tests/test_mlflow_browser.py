"""The audit as MLflow's UI shows it, in a real browser (Debian's chromium, headless):
the run page opens on the runs view with the audit's name, and its artifacts list the
report and the tables. Skipped where chromium is not installed."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import time
import urllib.request
import zlib

import pytest

from .service_helpers import free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed"),
]


def _browse(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    cmd = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu"]
    cmd += ["--disable-dev-shm-usage", "--hide-scrollbars", "--window-size=1400,1000"]
    cmd += ["--virtual-time-budget=20000", *args, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def _distinct_rows(png: bytes) -> int:
    """How many different pixel rows the PNG has (1 for a blank page)."""
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    i, idat, height = 8, b"", 0
    while i < len(png):
        (n,) = struct.unpack(">I", png[i : i + 4])
        kind, chunk = png[i + 4 : i + 8], png[i + 8 : i + 8 + n]
        if kind == b"IHDR":
            _, height = struct.unpack(">II", chunk[:8])
        elif kind == b"IDAT":
            idat += chunk
        i += 12 + n
    raw = zlib.decompress(idat)
    stride = len(raw) // height
    return len({raw[r * stride + 1 : (r + 1) * stride] for r in range(height)})


def test_the_audit_run_and_its_report_in_mlflows_ui(tmp_path, monkeypatch):
    from auditor import tracking
    from auditor.audit import run_audit
    from auditor.spec import AuditSpec
    from dashboards.report import write_report

    monkeypatch.setenv("RECAUDIT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    spec = {
        "scenario": "topics-tiny-v1",
        "users": 12,
        "steps": 3,
        "replicates": 2,
        "policy": {"kind": "myopic"},
        "references": [{"kind": "natural"}],
    }
    result = run_audit(AuditSpec.model_validate(spec), render=write_report)
    exp = result.report.provenance.mlflow_experiment_id
    port = free_port()
    server = subprocess.Popen(
        tracking.ui_command("127.0.0.1", port),
        env={**os.environ},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline
                time.sleep(1)
        link = tracking.run_link(exp, result.run_id, base=f"http://127.0.0.1:{port}")
        assert link is not None
        shot = tmp_path / "run.png"
        assert _browse(link, f"--screenshot={shot}").returncode == 0
        assert _distinct_rows(shot.read_bytes()) > 50  # a drawn page, not a blank one
        dom = _browse(link, "--dump-dom").stdout
        name = f"audit myopic on topics-tiny-v1 {result.report.provenance.fingerprint[:8]}"
        assert name in dom and "Model training" in dom
        artifacts = link.replace("?", "/artifacts/report.html?", 1)
        dom = _browse(artifacts, "--dump-dom").stdout
        assert "report.html" in dom and "tables" in dom and "mlflow-html-iframe" in dom
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=60)
