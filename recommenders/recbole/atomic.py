"""RecBole atomic files: an interaction log written and read as ``<name>.inter``
(and ``<name>.item``), and simulator feedback as a log.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from simulator.errors import SpecError
from simulator.logs import read_atomic  # the one reader of atomic files (simulator layer)
from simulator.types import Feedback

PAD = "[PAD]"


INTER_FIELDS = ("user_id:token", "item_id:token", "timestamp:float")
ITEM_FIELDS = ("item_id:token", "genre:token_seq")


_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _token(value: Any, what: str) -> str:
    tok = str(value)
    if not tok or any(c in tok for c in "\t\n\r") or tok == PAD:
        raise SpecError(f"{what} token {tok!r} is empty, is {PAD!r} or contains a tab/newline")
    return tok


def _tokens(values: pd.Series, what: str) -> np.ndarray:
    """:func:`_token` of every value, vectorized (logs have millions of rows)."""
    tok = values.astype(str)
    bad = tok.eq("") | tok.eq(PAD) | tok.str.contains(r"[\t\n\r]", regex=True)
    if bad.any():
        _token(tok[bad.to_numpy()].iloc[0], what)  # raises with the first bad token
    return tok.to_numpy(dtype=object)


def write_atomic_files(
    interactions: pd.DataFrame,
    data_dir: str | Path,
    dataset_name: str,
    *,
    item_genres: pd.Series | Mapping[Any, Any] | None = None,
) -> Path:
    """Write ``<data_dir>/<dataset_name>/<dataset_name>.inter`` (and ``.item``).

    ``interactions`` has columns ``user``, ``item``, ``timestamp`` (tokens are ``str`` of
    the values; timestamps finite floats). ``item_genres`` maps item -> genre(s): a string
    of space-separated genre tokens or a sequence of tokens; every item it lists is
    written to ``.item``, so RecBole knows it even without interactions. Returns the
    dataset directory.
    """
    _check_name(dataset_name)
    missing = {"user", "item", "timestamp"} - set(interactions.columns)
    if missing:
        raise SpecError(f"interaction log lacks column(s) {sorted(missing)}")
    ts = pd.to_numeric(interactions["timestamp"], errors="coerce").to_numpy(dtype=np.float64)
    if not np.isfinite(ts).all():
        raise SpecError("interaction timestamps must be finite numbers")
    out = Path(data_dir) / dataset_name
    out.mkdir(parents=True, exist_ok=True)
    inter = pd.DataFrame(
        {
            INTER_FIELDS[0]: _tokens(interactions["user"], "user"),
            INTER_FIELDS[1]: _tokens(interactions["item"], "item"),
            INTER_FIELDS[2]: ts,
        }
    )
    _write_tsv(inter, out / f"{dataset_name}.inter")
    if item_genres is not None:
        genres = pd.Series(item_genres)
        rows = []
        for item, g in genres.items():
            tokens = g.split() if isinstance(g, str) else [str(x) for x in g]
            if any(not t or any(c.isspace() for c in t) for t in tokens):
                raise SpecError(f"genre tokens of item {item!r} must be non-empty words")
            rows.append((_token(item, "item"), " ".join(tokens)))
        item_df = pd.DataFrame(rows, columns=list(ITEM_FIELDS))
        if item_df[ITEM_FIELDS[0]].duplicated().any():
            raise SpecError("item_genres lists an item twice")
        _write_tsv(item_df, out / f"{dataset_name}.item")
    return out


def _write_tsv(df: pd.DataFrame, path: Path) -> None:
    # floats are written with repr (shortest round-tripping form)
    df.to_csv(path, sep="\t", index=False, quoting=csv.QUOTE_NONE, lineterminator="\n")


def read_atomic_files(
    data_dir: str | Path, dataset_name: str
) -> tuple[pd.DataFrame, pd.Series | None]:
    """The inverse of :func:`write_atomic_files`: (log with ``user``, ``item``,
    ``timestamp``; genres by item as space-separated strings, or None)."""
    base = Path(data_dir) / dataset_name
    inter = read_atomic(base / f"{dataset_name}.inter")
    log = pd.DataFrame(
        {"user": inter["user_id"], "item": inter["item_id"], "timestamp": inter["timestamp"]}
    )
    item_path = base / f"{dataset_name}.item"
    if not item_path.is_file():
        return log, None
    items = read_atomic(item_path)
    return log, pd.Series(items["genre"].to_numpy(), index=items["item_id"].to_numpy())


def feedback_to_frame(feedback: Feedback, *, timestamp: float | None = None) -> pd.DataFrame:
    """The clicks of one step as a log: user = row index, item = chosen item index,
    timestamp = ``feedback.t`` unless given. Users who did not click are left out."""
    item = feedback.item.detach().cpu()
    users = torch.nonzero(item >= 0).flatten()
    ts = float(feedback.t if timestamp is None else timestamp)
    return pd.DataFrame(
        {
            "user": users.numpy(),
            "item": item[users].numpy(),
            "timestamp": np.full(users.numel(), ts, dtype=np.float64),
        }
    )


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise SpecError(
            f"dataset name {name!r} must be 1-64 letters, digits, '_', '.', '-' (no paths)"
        )
