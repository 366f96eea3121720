"""Reading interaction logs and item tables: the one reader of ``recaudit fit``, of
``recaudit scenario derive`` and of ``POST /v1/datasets``.

A log is a CSV, parquet (read by pyarrow; nothing is unpickled) or RecBole atomic
``.inter`` file with user, item and timestamp columns (named, or the first of the usual
names present) and an optional rating or 0/1 label; an item table (CSV, parquet or
``.item``) holds distinct item ids and optional category and numeric attribute columns.
Bad input (missing columns, unparsable timestamps, NaN, duplicate item ids) raises
:class:`~simulator.errors.SpecError` naming the first offending rows. Rows are numbered
from 1, as data rows (a CSV's header is row 0).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import SpecError

#: log and item table formats read (parquet through pyarrow; nothing is unpickled)
LOG_SUFFIXES = (".csv", ".parquet", ".inter")
ITEM_SUFFIXES = (".csv", ".parquet", ".item")
#: offending rows a message names
SHOW_ROWS = 5
_AUTO = {
    "user": ("user_id", "user"),
    "item": ("item_id", "item"),
    "timestamp": ("timestamp", "time", "ts"),
    "rating": ("rating",),
    "label": ("label",),
}


@dataclass(frozen=True)
class Columns:
    """Column names of the log (None: the first of the usual names that is present)."""

    user: str | None = None
    item: str | None = None
    timestamp: str | None = None
    rating: str | None = None
    label: str | None = None


@dataclass(frozen=True)
class ItemColumns:
    """Column names of the item table."""

    id: str | None = None
    category: str | None = None
    polarity: str | None = None


def _fmt_rows(rows: np.ndarray, values: pd.Series | None = None) -> str:
    shown = [int(r) + 1 for r in rows[:SHOW_ROWS]]
    text = ", ".join(str(r) for r in shown)
    if values is not None:
        vals = ", ".join(repr(str(v)) for v in values.iloc[rows[:SHOW_ROWS]].tolist())
        text += f" ({vals})"
    more = f" and {len(rows) - SHOW_ROWS} more" if len(rows) > SHOW_ROWS else ""
    return f"{'row' if len(rows) == 1 else 'rows'} {text}{more}"


def _bad(name: str, problem: str, mask: np.ndarray, values: pd.Series | None = None) -> None:
    rows = np.flatnonzero(mask)
    if rows.size:
        raise SpecError(f"{name}: {problem} in {_fmt_rows(rows, values)}")


def _read_table(path: Path, suffixes: tuple[str, ...], what: str) -> pd.DataFrame:
    if not path.is_file():
        raise SpecError(f"{what} file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in suffixes:
        raise SpecError(f"{what} file must be {', '.join(suffixes)}, not {path.name}")
    try:
        if suffix == ".csv":
            return pd.read_csv(path, dtype=str, encoding="utf-8")
        if suffix == ".parquet":
            return pd.read_parquet(path, engine="pyarrow")
        table = read_atomic(path)
        # atomic files mark nothing missing; an empty cell is a missing value
        return table.replace("", np.nan)
    except SpecError:
        raise
    except (ValueError, OSError, UnicodeDecodeError, ImportError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SpecError(f"cannot read {what} file {path.name}: {first}") from None


def _pick(
    table: pd.DataFrame, role: str, given: str | None, name: str, required: bool
) -> str | None:
    if given is not None:
        if given not in table.columns:
            raise SpecError(
                f"{name}: no column {given!r} for the {role} (columns: {', '.join(map(str, table.columns))})"
            )
        return given
    for cand in _AUTO.get(role, ()):
        if cand in table.columns:
            return cand
    if required:
        raise SpecError(
            f"{name}: no {role} column (looked for {', '.join(_AUTO[role])}; columns: "
            f"{', '.join(map(str, table.columns))}); name it with --{role}-col"
        )
    return None


def _ids(table: pd.DataFrame, col: str, name: str, role: str) -> pd.Series:
    values = table[col]
    _bad(name, f"missing {role} ({col})", values.isna().to_numpy())
    if pd.api.types.is_float_dtype(values):
        whole = values == values.round()
        _bad(name, f"{role} ({col}) is not an integer or string id", ~whole.to_numpy(), values)
        values = values.astype(np.int64)
    out = values.astype(str).str.strip()
    _bad(
        name,
        f"{role} ({col}) is empty or holds a tab or newline",
        (out.eq("") | out.str.contains(r"[\t\n\r]") | out.eq("[PAD]")).to_numpy(),
        values,
    )
    return out


def _timestamps(values: pd.Series, name: str, col: str) -> np.ndarray:
    """Seconds as float64: numbers are taken as they are, date-times as POSIX seconds."""
    _bad(name, f"missing timestamp ({col})", values.isna().to_numpy())
    if pd.api.types.is_datetime64_any_dtype(values):
        ts = pd.to_datetime(values, utc=True)
        return (ts - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy(np.float64)
    if pd.api.types.is_numeric_dtype(values):
        out = values.to_numpy(np.float64)
    else:
        out = pd.to_numeric(values, errors="coerce").to_numpy(np.float64)
        text = np.isnan(out)
        if text.any():  # the rest must be date-times
            dt = pd.to_datetime(values[text], errors="coerce", utc=True, format="mixed")
            bad = np.zeros(len(values), dtype=bool)
            bad[np.flatnonzero(text)] = dt.isna().to_numpy()
            _bad(name, f"unparsable timestamp ({col})", bad, values)
            out[text] = (dt - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy(np.float64)
    _bad(name, f"timestamp ({col}) is NaN or infinite", ~np.isfinite(out), values)
    return out


def _numbers(values: pd.Series, name: str, col: str, role: str) -> np.ndarray:
    num = pd.to_numeric(values, errors="coerce").to_numpy(np.float64)
    _bad(name, f"{role} ({col}) is missing, NaN or not a number", ~np.isfinite(num), values)
    return num


@dataclass
class ReadLog:
    log: pd.DataFrame  # user, item (str tokens), timestamp (float64 seconds), in file order
    rows_read: int
    dropped: dict[str, int]
    columns: dict[str, str | None]


def read_log(
    path: str | Path, columns: Columns = Columns(), min_rating: float | None = None
) -> ReadLog:
    """The log's interactions, validated (SpecError naming the first offending rows).
    With a label column, rows whose label is 0 are dropped; with ``min_rating``, rows
    rated below it; each drop is counted by reason."""
    p = Path(path)
    name = p.name
    table = _read_table(p, LOG_SUFFIXES, "log")
    if not len(table):
        raise SpecError(f"{name}: the log has no rows")
    ucol = _pick(table, "user", columns.user, name, True)
    icol = _pick(table, "item", columns.item, name, True)
    tcol = _pick(table, "timestamp", columns.timestamp, name, True)
    assert ucol is not None and icol is not None and tcol is not None
    rcol = _pick(table, "rating", columns.rating, name, min_rating is not None)
    lcol = _pick(table, "label", columns.label, name, False)
    users = _ids(table, ucol, name, "user")
    items = _ids(table, icol, name, "item")
    ts = _timestamps(table[tcol], name, tcol)
    keep = np.ones(len(table), dtype=bool)
    dropped: dict[str, int] = {}
    if lcol is not None:
        label = _numbers(table[lcol], name, lcol, "label")
        neg = label <= 0
        dropped[f"{lcol} is 0 (not a positive interaction)"] = int(neg.sum())
        keep &= ~neg
    if rcol is not None:
        rating = _numbers(table[rcol], name, rcol, "rating")
        if min_rating is not None:
            low = rating < min_rating
            dropped[f"{rcol} below {min_rating:g}"] = int((low & keep).sum())
            keep &= ~low
    log = pd.DataFrame({"user": users[keep], "item": items[keep], "timestamp": ts[keep]})
    if not len(log):
        raise SpecError(f"{name}: no interactions left after dropping {dropped}")
    return ReadLog(
        log=log.reset_index(drop=True),
        rows_read=len(table),
        dropped={k: v for k, v in dropped.items() if v},
        columns={"user": ucol, "item": icol, "timestamp": tcol, "rating": rcol, "label": lcol},
    )


@dataclass
class ItemTable:
    ids: pd.Series  # str
    genres: pd.Series | None  # full category values, by id (RecBole .item genres)
    category: pd.Series | None  # one label per item, by id
    polarity: pd.Series | None  # float, by id (NaN: none)
    columns: dict[str, str | None]


def read_items(path: str | Path, columns: ItemColumns = ItemColumns()) -> ItemTable:
    """The item table: distinct ids (SpecError naming the rows of a repeated id), an
    optional category (for an atomic ``token_seq`` field: its first token), an optional
    numeric polarity attribute (missing values allowed: those items have none)."""
    p = Path(path)
    name = p.name
    table = _read_table(p, ITEM_SUFFIXES, "item table")
    if not len(table):
        raise SpecError(f"{name}: the item table has no rows")
    icol = _pick(table, "item", columns.id, name, True)
    assert icol is not None
    ids = _ids(table, icol, name, "item id")
    dup = ids.duplicated(keep=False).to_numpy()
    if dup.any():
        first = ids[dup].iloc[0]
        rows = np.flatnonzero((ids == first).to_numpy())
        raise SpecError(
            f"{name}: item id {first!r} appears more than once ({_fmt_rows(rows)}); "
            f"{int(ids.duplicated().sum())} repeated ids in all"
        )
    genres = category = polarity = None
    if columns.category is not None:
        _pick(table, "category", columns.category, name, True)
        raw = table[columns.category].astype("string").fillna("unknown").str.strip()
        raw = raw.mask(raw.eq(""), "unknown")
        genres = pd.Series(raw.to_numpy(dtype=object), index=ids.to_numpy())
        label = raw.str.split().str[0] if p.suffix.lower() == ".item" else raw
        category = pd.Series(label.to_numpy(dtype=object), index=ids.to_numpy())
    if columns.polarity is not None:
        _pick(table, "polarity", columns.polarity, name, True)
        values = pd.to_numeric(table[columns.polarity], errors="coerce")
        bad = values.isna() & table[columns.polarity].notna()
        _bad(
            name,
            f"polarity ({columns.polarity}) is not a number",
            bad.to_numpy(),
            table[columns.polarity],
        )
        _bad(
            name,
            f"polarity ({columns.polarity}) is infinite",
            np.isinf(values.to_numpy(np.float64)),
        )
        polarity = pd.Series(values.to_numpy(np.float64), index=ids.to_numpy())
    return ItemTable(
        ids=ids,
        genres=genres,
        category=category,
        polarity=polarity,
        columns={"id": icol, "category": columns.category, "polarity": columns.polarity},
    )


def read_atomic(path: str | Path) -> pd.DataFrame:
    """Read one atomic file; columns are named by field (``user_id``), token and
    token_seq fields are ``str``, float fields ``float64``."""
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"atomic file not found: {p}")
    raw = pd.read_csv(
        p,
        sep="\t",
        dtype=str,
        keep_default_na=False,
        quoting=csv.QUOTE_NONE,
        encoding="utf-8",
    )
    out = pd.DataFrame(index=raw.index)
    for col in raw.columns:
        name, _, ftype = str(col).partition(":")
        if ftype not in ("token", "token_seq", "float", "float_seq"):
            raise SpecError(f"{p.name}: column {col!r} is not 'name:type' with a RecBole type")
        out[name] = raw[col].astype(float) if ftype == "float" else raw[col]
    return out
