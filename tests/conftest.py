from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from .service_helpers import free_port, stop_group, wait_for

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def recaudit_bin() -> str:
    exe = BIN / "recaudit"
    assert exe.exists(), "the recaudit console script is not installed (run make setup)"
    return str(exe)


@pytest.fixture(scope="module")
def embedded_ray():
    """An embedded Ray instance for one test module (no dashboard), shut down after it."""
    import ray

    from auditor.executor import ensure_ray

    os.environ.pop("RAY_ADDRESS", None)
    ensure_ray("local")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def ray_head():
    """A real Ray cluster for one test module: `ray start --head --block` in its own
    process group, yielding its address; stopped by signalling that group only (`ray
    stop` would end every Ray process on the machine, the session's embedded Ray
    included)."""
    port = free_port()
    head = subprocess.Popen(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--node-ip-address=127.0.0.1",
            "--num-cpus=2",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={tempfile.mkdtemp(prefix='ray-')}",  # short: socket paths are limited
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:

        def up() -> bool:
            assert head.poll() is None, "ray start exited"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                return False

        wait_for(up, timeout=120, every=0.5)
        yield f"127.0.0.1:{port}"
    finally:
        stop_group(head, signal.SIGTERM, timeout=20)
