"""Reading item and user matrices from files, safely (never unpickling)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .errors import SpecError


def read_matrix(path: str | Path, *, what: str) -> tuple[np.ndarray, pd.DataFrame | None]:
    """Return (rows x dim float32 matrix, the full table for parquet or None).

    ``.npy`` is read with ``allow_pickle=False``; ``.parquet`` must have columns
    ``f0..f{d-1}``. Anything else, a missing file, or non-finite values raise SpecError.
    """
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"{what} file not found: {p}")
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
