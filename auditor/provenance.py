"""Provenance of an audit: the code version it ran."""

from __future__ import annotations

import subprocess
from pathlib import Path

_GIT: tuple[str | None, bool] | None = None


def code_version() -> tuple[str, str | None]:
    """('recaudit <version>[+g<commit>[.dirty]]', commit or None)."""
    global _GIT
    from importlib import metadata

    try:
        package_version = metadata.version("recaudit")
    except metadata.PackageNotFoundError:
        package_version = "unknown"

    if _GIT is None:
        root = Path(__file__).resolve().parents[1]
        commit, dirty = None, False
        if (root / ".git").exists():
            try:
                commit = (
                    subprocess.run(
                        ["git", "-C", str(root), "rev-parse", "HEAD"],
                        capture_output=True,
                        text=True,
                        timeout=5,
                        check=True,
                    ).stdout.strip()
                    or None
                )
                dirty = (
                    subprocess.run(
                        ["git", "-C", str(root), "diff", "--quiet", "HEAD", "--"],
                        capture_output=True,
                        timeout=5,
                    ).returncode
                    == 1
                )
            except (OSError, subprocess.SubprocessError):
                commit = None
        _GIT = (commit, dirty)
    commit, dirty = _GIT
    version = f"recaudit {package_version}"
    if commit:
        version += f"+g{commit[:12]}" + (".dirty" if dirty else "")
    return version, commit
