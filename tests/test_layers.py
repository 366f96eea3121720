"""Layers point one way: simulator <- recommenders <- auditor <- dashboards <- service <- recaudit
(CLI)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ORDER = ["simulator", "recommenders", "auditor", "dashboards", "service", "recaudit"]
#: modules allowed to import each heavy integration
FENCED = {
    "recbole": {"recommenders/recbole"},
    "mlflow": {"auditor/tracking.py", "dashboards"},
}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", ORDER)
def test_no_package_imports_a_higher_layer(package):
    higher = set(ORDER[ORDER.index(package) + 1 :])
    for path in (ROOT / package).rglob("*.py"):
        bad = imports_of(path) & higher
        assert not bad, f"{path.relative_to(ROOT)} imports higher layer(s) {bad}"


def test_simulator_imports_no_ray_mlflow_or_recbole():
    for path in (ROOT / "simulator").rglob("*.py"):
        assert not imports_of(path) & {"ray", "mlflow", "recbole"}, path


def test_heavy_integrations_are_fenced():
    for lib, allowed in FENCED.items():
        for package in ORDER:
            for path in (ROOT / package).rglob("*.py"):
                rel = str(path.relative_to(ROOT))
                if lib in imports_of(path):
                    assert any(rel == a or rel.startswith(a + "/") for a in allowed), (
                        f"{rel} imports {lib}"
                    )


def test_only_the_executor_starts_ray_work():
    for package in ORDER:
        for path in (ROOT / package).rglob("*.py"):
            rel = str(path.relative_to(ROOT))
            if "ray" in imports_of(path):
                assert rel == "auditor/executor.py", f"{rel} imports ray"
