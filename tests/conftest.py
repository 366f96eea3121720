from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def recaudit_bin() -> str:
    exe = BIN / "recaudit"
    assert exe.exists(), "the recaudit console script is not installed (run make setup)"
    return str(exe)


@pytest.fixture(scope="session")
def embedded_ray():
    """One embedded Ray instance for the test session (2 CPUs, no dashboard)."""
    import ray

    from auditor.executor import ensure_ray

    os.environ.pop("RAY_ADDRESS", None)
    ensure_ray("local")
    yield ray
    ray.shutdown()
