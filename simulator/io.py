"""Reading item and user matrices from files, safely (never unpickling)."""

from __future__ import annotations

import hashlib
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from .errors import SpecError
from .types import check_ids

#: data shipped with the package; a spec path ``data:<relative path>`` resolves under it
DATA_DIR = Path(__file__).resolve().parent / "data"
DATA_PREFIX = "data:"
#: the columns of catalog and population tables holding each item's or user's stable id
ITEM_ID_COLUMN = "item_id"
USER_ID_COLUMN = "user_id"


def resolve_path(path: str | Path) -> Path:
    """``data:movielens-100k-v1/items.parquet`` -> ``<simulator package>/data/...``; any
    other path is returned unchanged. A ``data:`` path must be relative and stay inside
    the data directory (no ``..``)."""
    if isinstance(path, str) and path.startswith(DATA_PREFIX):
        rel = PurePosixPath(path[len(DATA_PREFIX) :])
        if not rel.parts or rel.is_absolute() or ".." in rel.parts or "\\" in str(rel):
            raise SpecError(f"bad package data path {path!r}: use data:<dir>/<file>")
        return DATA_DIR.joinpath(*rel.parts)
    return Path(path)


def file_sha256(path: str | Path) -> str:
    """SHA-256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_matrix(
    path: str | Path, *, what: str, sha256: str | None = None
) -> tuple[np.ndarray, pd.DataFrame | None]:
    """Return (rows x dim float32 matrix, the full table for parquet or None).

    ``path`` may name package data as ``data:<dir>/<file>`` (see :func:`resolve_path`).

    ``.npy`` is read with ``allow_pickle=False``; ``.parquet`` must have columns
    ``f0..f{d-1}``. Anything else, a missing file, non-finite values, or a digest other
    than ``sha256`` (when given) raise SpecError.
    """
    p = resolve_path(path)
    if not p.is_file():
        raise SpecError(f"{what} file not found: {p}")
    if sha256 is not None and file_sha256(p) != sha256:
        raise SpecError(f"{what} file {p} has changed: its SHA-256 is not the one recorded")
    suffix = p.suffix.lower()
    table: pd.DataFrame | None = None
    try:
        if suffix == ".npy":
            mat = np.load(p, allow_pickle=False)
        elif suffix == ".parquet":
            table = pd.read_parquet(p)
            cols = [
                c
                for c in table.columns
                if isinstance(c, str) and c.startswith("f") and c[1:].isdigit()
            ]
            cols.sort(key=lambda c: int(c[1:]))
            if not cols or cols != [f"f{i}" for i in range(len(cols))]:
                raise SpecError(f"{what} parquet file {p} needs feature columns f0, f1, ...")
            mat = table[cols].to_numpy()
        else:
            raise SpecError(f"{what} file must be .npy or .parquet, not {p.name}")
    except SpecError:
        raise
    except (ValueError, OSError) as exc:  # corrupt file, object arrays, bad parquet
        raise SpecError(f"cannot read {what} file {p}: {exc}") from None
    if mat.ndim != 2 or mat.shape[0] < 1 or mat.shape[1] < 1:
        raise SpecError(f"{what} file {p} must hold a 2-D matrix, got shape {mat.shape}")
    if not np.issubdtype(mat.dtype, np.number):
        raise SpecError(f"{what} file {p} must be numeric, got {mat.dtype}")
    mat = mat.astype(np.float32)
    if not np.isfinite(mat).all():
        raise SpecError(f"{what} file {p} contains NaN or infinite values")
    return mat, table


def id_column(table: pd.DataFrame, name: str, path: str, entity: str) -> tuple[str, ...]:
    """The string ids in column ``name`` of a catalog or population table: distinct,
    non-empty, none missing (SpecError naming the first offending row)."""
    col = table[name]
    missing = col.isna().to_numpy()
    if missing.any():
        raise SpecError(f"{entity} id missing in row {int(missing.argmax())} of {path}")
    try:
        return check_ids([str(x) for x in col.tolist()], len(col), entity)
    except ValueError as exc:
        raise SpecError(f"{path}: {exc}") from None


def matrix_shape(path: str | Path, *, what: str) -> tuple[int, int]:
    """(rows, dim) of the matrix :func:`read_matrix` would return, from the file's header
    alone (a ``.npy`` header, a ``.parquet`` footer): sizes a file-backed part of a
    scenario without loading it. SpecError for a missing or unreadable file, naming the
    path as given (never where it resolves to)."""
    p = resolve_path(path)
    if not p.is_file():
        raise SpecError(f"{what} file {str(path)!r} not found")
    suffix = p.suffix.lower()
    try:
        if suffix == ".npy":
            with p.open("rb") as f:
                fmt = np.lib.format
                major, _ = fmt.read_magic(f)
                read = fmt.read_array_header_1_0 if major == 1 else fmt.read_array_header_2_0
                shape, _, _ = read(f)
        elif suffix == ".parquet":
            import pyarrow.parquet as pq

            meta = pq.read_metadata(p)
            cols = [c for c in meta.schema.names if c.startswith("f") and c[1:].isdigit()]
            shape = (meta.num_rows, len(cols))
        else:
            raise SpecError(f"{what} file must be .npy or .parquet, not {p.name}")
    except SpecError:
        raise
    except (ValueError, OSError) as exc:
        raise SpecError(f"cannot read {what} file {str(path)!r}: {type(exc).__name__}") from None
    if len(shape) != 2 or shape[0] < 1 or shape[1] < 1:
        raise SpecError(f"{what} file {str(path)!r} must hold a 2-D matrix, got shape {shape}")
    return int(shape[0]), int(shape[1])
