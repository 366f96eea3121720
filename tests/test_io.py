"""Catalogs and populations from files: read safely, refuse what is not data."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
import torch

from simulator.catalog import build_catalog
from simulator.errors import SpecError
from simulator.specs import FileCatalog, FilePopulation
from simulator.users import sample_population


def test_npy_catalog_round_trips(tmp_path):
    mat = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.save(tmp_path / "items.npy", mat)
    cat = build_catalog(FileCatalog(path=str(tmp_path / "items.npy")), env_seed=0)
    assert torch.equal(cat.features, torch.from_numpy(mat))
    assert cat.topic.tolist() == [2, 2, 2, 2]  # argmax of each row


def test_parquet_catalog_reads_appeal_quality_topic(tmp_path):
    df = pd.DataFrame(
        {
            "f0": [1.0, 0.0],
            "f1": [0.0, 1.0],
            "appeal": [0.5, -0.5],
            "quality": [1.0, 2.0],
            "topic": [7, 8],
        }
    )
    df.to_parquet(tmp_path / "items.parquet")
    cat = build_catalog(FileCatalog(path=str(tmp_path / "items.parquet")), env_seed=0)
    assert cat.appeal.tolist() == [0.5, -0.5] and cat.quality.tolist() == [1.0, 2.0]
    assert cat.topic.tolist() == [7, 8]


def test_pickled_object_arrays_are_refused_without_unpickling(tmp_path):
    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled!')",))

    np.save(tmp_path / "evil.npy", np.array([Boom()], dtype=object), allow_pickle=True)
    with pytest.raises(SpecError, match="cannot read"):
        build_catalog(FileCatalog(path=str(tmp_path / "evil.npy")), env_seed=0)
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(SpecError, match=r"must be \.npy or \.parquet"):
        build_catalog(FileCatalog(path=str(tmp_path / "evil.pkl")), env_seed=0)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (np.array([1.0, 2.0]), "2-D matrix"),
        (np.array([[1.0, np.nan]]), "NaN"),
    ],
)
def test_bad_matrices_are_refused(tmp_path, content, message):
    np.save(tmp_path / "m.npy", content)
    with pytest.raises(SpecError, match=message):
        build_catalog(FileCatalog(path=str(tmp_path / "m.npy")), env_seed=0)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(SpecError, match="not found"):
        build_catalog(FileCatalog(path=str(tmp_path / "nope.npy")), env_seed=0)


def test_population_file_takes_rows_in_order_or_resamples(tmp_path):
    mat = np.eye(3, dtype=np.float32)
    np.save(tmp_path / "users.npy", mat)
    spec = FilePopulation(path=str(tmp_path / "users.npy"))
    g = torch.Generator().manual_seed(0)
    assert torch.equal(sample_population(spec, 2, 3, env_seed=0, gen=g), torch.eye(3)[:2])
    many = sample_population(spec, 50, 3, env_seed=0, gen=g)
    assert many.shape == (50, 3) and (many.sum(dim=1) == 1).all()
    with pytest.raises(SpecError, match="dimension"):
        sample_population(spec, 2, 4, env_seed=0, gen=g)
