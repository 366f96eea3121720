"""MovieLens 100k, as RecBole bundles it: the files' location and the log they hold
(``recommenders.derive`` derives the ``movielens-100k-v1`` scenario from them)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd

from simulator.errors import SpecError

from .recbole.atomic import read_atomic


def ml100k_dir() -> Path:
    """RecBole's bundled MovieLens 100k atomic files (site-packages; never downloaded).
    RecBole is located, not imported."""
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("No module named 'recbole'", name="recbole")
    package = Path(next(iter(spec.submodule_search_locations))).resolve()
    path = package / "dataset_example" / "ml-100k"
    if not (path / "ml-100k.inter").is_file():
        raise SpecError(f"RecBole's bundled ml-100k is missing at {path}")
    return path


def load_ml100k() -> tuple[pd.DataFrame, pd.Series]:
    """MovieLens 100k from RecBole's bundled files: (log with ``user``, ``item``,
    ``timestamp`` tokens as in the files; genres by item, RecBole's ``class`` field)."""
    src = ml100k_dir()
    inter = read_atomic(src / "ml-100k.inter")
    items = read_atomic(src / "ml-100k.item")
    log = pd.DataFrame(
        {"user": inter["user_id"], "item": inter["item_id"], "timestamp": inter["timestamp"]}
    )
    genres = pd.Series(items["class"].to_numpy(), index=items["item_id"].to_numpy())
    return log, genres
