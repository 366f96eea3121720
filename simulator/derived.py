"""Scenario directories: a scenario derived from a team's data, kept as files that can move.

A directory holds ``scenario.json`` (a :class:`~simulator.specs.ScenarioSpec` whose file
catalog and population name ``items.parquet`` and ``users.parquet`` relative to the
directory, each with its SHA-256), the two tables, and ``derivation.json`` (provenance).
:func:`load_scenario_dir` reads the spec and resolves the paths against the directory;
the fingerprint does not depend on where the directory lies (files with a recorded
SHA-256 count by content).
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import ValidationError

from .errors import SpecError
from .specs import ScenarioSpec

SCENARIO_FILE = "scenario.json"
DERIVATION_FILE = "derivation.json"
ITEMS_FILE = "items.parquet"
USERS_FILE = "users.parquet"
_MAX_SPEC_BYTES = 1 << 20


def is_scenario_dir(text: str | Path) -> bool:
    """Whether ``text`` names a directory holding a ``scenario.json``."""
    p = Path(text)
    return p.is_dir() and (p / SCENARIO_FILE).is_file()


def _relative(path: str, where: str) -> str:
    rel = PurePosixPath(path)
    if rel.is_absolute() or ".." in rel.parts or "\\" in path or len(rel.parts) != 1:
        raise SpecError(f"{where}: a scenario directory's files are named by file name only")
    return path


def load_scenario_dir(directory: str | Path) -> ScenarioSpec:
    """The scenario of a directory, its file paths resolved against the directory."""
    d = Path(directory)
    path = d / SCENARIO_FILE
    if not path.is_file():
        raise SpecError(f"{d} is not a scenario directory (no {SCENARIO_FILE})")
    if path.stat().st_size > _MAX_SPEC_BYTES:
        raise SpecError(f"{path} is too large for a scenario spec")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise SpecError(f"{path} is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise SpecError(f"{path} must hold a JSON object")
    for part in ("catalog", "population"):
        node = data.get(part)
        if isinstance(node, dict) and node.get("kind") == "file":
            name = _relative(str(node.get("path", "")), f"{path} {part}.path")
            node["path"] = str((d / name).resolve())
    try:
        return ScenarioSpec.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise SpecError(f"{path}: invalid {where}: {first['msg']}") from None


def write_scenario_json(spec: ScenarioSpec, directory: str | Path) -> Path:
    """Write ``scenario.json`` with the file paths relative to ``directory``."""
    d = Path(directory)
    data: dict[str, Any] = spec.model_dump(mode="json")
    for part in ("catalog", "population"):
        if data[part].get("kind") == "file":
            data[part]["path"] = Path(data[part]["path"]).name
    out = d / SCENARIO_FILE
    out.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return out


def resolve_scenario(text: str) -> ScenarioSpec:
    """A scenario named on a command line: a registered id, or a scenario directory."""
    if is_scenario_dir(text):
        return load_scenario_dir(text)
    if "/" in text or Path(text).exists():
        raise SpecError(f"{text} is not a scenario directory (no {SCENARIO_FILE})")
    from .scenarios import get_scenario

    return get_scenario(text)
