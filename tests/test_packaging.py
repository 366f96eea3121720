"""`pip install .` brings what the code imports; the docs point at files that exist."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("recaudit", "simulator", "recommenders", "auditor", "service", "dashboards")
#: installed alone with --no-deps (its metadata pins a Ray that no longer imports)
NOT_DECLARABLE = {"recbole"}


def _name(requirement: str) -> str:
    """The normalized distribution name of a requirement string."""
    name = re.split(r"[\s\[<>=!~;]", requirement.strip(), maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def _imports() -> dict[str, set[str]]:
    """Top-level third-party modules imported by the packages -> the files importing them."""
    found: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in PACKAGES:
                        found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_imported_package_is_declared_in_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_name(r) for r in project["dependencies"]}
    recbole_extra = {_name(r) for r in project["optional-dependencies"]["recbole"]}
    dists = packages_distributions()
    missing = []
    for module, files in sorted(_imports().items()):
        if module in NOT_DECLARABLE:
            assert module not in declared
            continue
        names = {_name(d) for d in dists.get(module, [module])}
        allowed = declared | (
            recbole_extra if all(f.startswith("recommenders/recbole/") for f in files) else set()
        )
        if not names & allowed:
            missing.append(f"{module} ({', '.join(sorted(files))})")
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"
    assert len(declared) >= 15  # not an empty list


def test_the_makefile_install_and_pip_install_agree():
    """requirements.txt (the Makefile's install) holds every declared dependency, and the
    documented extra step installs RecBole alone."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    required = {_name(x) for x in lines if x.strip() and not x.startswith("#")}
    wanted = project["dependencies"] + project["optional-dependencies"]["recbole"]
    assert {_name(r) for r in wanted} <= required
    step = "pip install --no-deps recbole==1.2.1"
    assert step in (ROOT / "docs" / "install.md").read_text()
    assert "--no-deps recbole==1.2.1" in (ROOT / "Makefile").read_text()


_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_MENTION = re.compile(r"\b(docs/[A-Za-z0-9_./-]+\.(?:md|png|svg))")


def test_every_relative_link_and_docs_mention_points_to_an_existing_file():
    broken = []
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for doc in docs:
        for target in _LINK.findall(doc.read_text()):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue  # a URL or an anchor in the same file
            path = target.split("#", 1)[0]
            if not (doc.parent / path).exists():
                broken.append(f"{doc.relative_to(ROOT)} -> {target}")
    for name in ("README.md", "Makefile", "requirements.txt", "pyproject.toml", "docs"):
        for source in [ROOT / name] if name != "docs" else sorted((ROOT / name).glob("*.md")):
            for mention in _MENTION.findall(source.read_text()):
                if not (ROOT / mention).exists():
                    broken.append(f"{source.relative_to(ROOT)} mentions {mention}")
    assert not broken, broken
