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


@pytest.fixture(scope="module")
def embedded_ray():
    """An embedded Ray instance for one test module (no dashboard), shut down after it."""
    import ray

    from auditor.executor import ensure_ray

    os.environ.pop("RAY_ADDRESS", None)
    ensure_ray("local")
    yield ray
    ray.shutdown()
