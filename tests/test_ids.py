"""Stable string ids at the boundary: catalogs carry item ids, populations user ids;
inside the engine items and users stay indices."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from simulator.catalog import build_catalog
from simulator.engine import build_environment, run_arms
from simulator.errors import SpecError
from simulator.policy import PolicyContext
from simulator.scenarios import SCENARIOS, get_scenario
from simulator.specs import FileCatalog, FilePopulation, with_overrides
from simulator.types import Catalog, Feedback, Observation
from simulator.users import sample_population_with_ids


class Recorder:
    """A policy that remembers the context it was reset with and shows items 0..k-1."""

    name = "recorder"
    oracle = False

    def reset(self, ctx: PolicyContext) -> None:
        self.ctx = ctx

    def act(self, obs: Observation) -> torch.Tensor:
        return torch.arange(self.ctx.slate_size).repeat(obs.num_users, 1)

    def update(self, feedback: Feedback) -> None:
        return None


def write_tables(tmp_path, n_items=6, n_users=4, dim=3, item_ids=None, user_ids=None):
    rng = np.random.default_rng(0)
    items = pd.DataFrame({f"f{d}": rng.normal(size=n_items) for d in range(dim)})
    items["item_id"] = item_ids or [f"sku-{100 + i}" for i in range(n_items)]
    users = pd.DataFrame({f"f{d}": rng.normal(size=n_users) for d in range(dim)})
    users["user_id"] = user_ids or [f"acct{i}" for i in range(n_users)]
    items.to_parquet(tmp_path / "items.parquet", index=False)
    users.to_parquet(tmp_path / "users.parquet", index=False)
    return items, users


def test_synthetic_catalogs_default_to_index_ids_and_keep_them_on_to():
    cat = build_catalog(get_scenario("topics-tiny-v1").catalog, env_seed=0)
    assert cat.item_ids == tuple(str(i) for i in range(30))
    moved = cat.to("cpu")
    assert moved.item_ids == cat.item_ids
    ctx = PolicyContext(
        num_users=3,
        slate_size=2,
        catalog=cat,
        generator=torch.Generator(),
        device=cat.features.device,
    )
    assert ctx.user_ids == ("0", "1", "2")


def test_ids_are_checked():
    f = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="2 item ids for 3 items"):
        Catalog(f, torch.zeros(3), torch.zeros(3), torch.zeros(3, dtype=torch.long), ("a", "b"))
    with pytest.raises(ValueError, match="'a' appears at positions 0 and 2"):
        Catalog(
            f, torch.zeros(3), torch.zeros(3), torch.zeros(3, dtype=torch.long), ("a", "b", "a")
        )


def test_file_catalog_and_population_read_their_id_columns(tmp_path):
    write_tables(tmp_path)
    cat = build_catalog(FileCatalog(path=str(tmp_path / "items.parquet")), env_seed=0)
    assert cat.item_ids[:2] == ("sku-100", "sku-101") and cat.to("cpu").item_ids == cat.item_ids
    spec = FilePopulation(path=str(tmp_path / "users.parquet"))
    u, ids = sample_population_with_ids(spec, 3, 3, env_seed=0, gen=torch.Generator())
    assert ids == ("acct0", "acct1", "acct2") and u.shape == (3, 3)
    # more users than rows: redrawn rows get distinct ids
    _, many = sample_population_with_ids(spec, 10, 3, env_seed=0, gen=torch.Generator())
    assert len(set(many)) == 10 and all(x.split("#")[0].startswith("acct") for x in many)


def test_engine_gives_policies_the_scenario_ids(tmp_path):
    write_tables(tmp_path)
    spec = with_overrides(
        get_scenario("topics-tiny-v1"),
        {
            "catalog": {"kind": "file", "path": str(tmp_path / "items.parquet")},
            "population": {"kind": "file", "path": str(tmp_path / "users.parquet")},
        },
    )
    rec = Recorder()
    run_arms(build_environment(spec), {"r": rec}, users=4, steps=1, seed=0)
    assert rec.ctx.user_ids == ("acct0", "acct1", "acct2", "acct3")
    assert rec.ctx.catalog.item_ids[5] == "sku-105"


@pytest.mark.parametrize("where", ["items", "users"])
def test_duplicate_or_missing_ids_in_files_are_refused(tmp_path, where):
    if where == "items":
        write_tables(tmp_path, item_ids=["a", "b", "c", "b", "e", "f"])
        with pytest.raises(SpecError, match="item id 'b' appears at positions 1 and 3"):
            build_catalog(FileCatalog(path=str(tmp_path / "items.parquet")), env_seed=0)
    else:
        write_tables(tmp_path, user_ids=["a", None, "c", "d"])
        spec = FilePopulation(path=str(tmp_path / "users.parquet"))
        with pytest.raises(SpecError, match="user id missing in row 1"):
            sample_population_with_ids(spec, 4, 3, env_seed=0, gen=torch.Generator())


def test_movielens_ids_are_the_movie_and_user_ids():
    spec = get_scenario("movielens-100k-v1")
    cat = build_catalog(spec.catalog, spec.env_seed)
    assert cat.item_ids[:3] == ("1", "2", "3") and cat.item_ids[-1] == "1682"
    _, users = sample_population_with_ids(
        spec.population, 943, cat.dim, env_seed=0, gen=torch.Generator()
    )
    assert users[0] == "1" and users[-1] == "943"


def test_every_shipped_file_scenario_has_ids():
    for spec in SCENARIOS.values():
        if isinstance(spec.catalog, FileCatalog):
            cat = build_catalog(spec.catalog, spec.env_seed)
            assert cat.item_ids != tuple(str(i) for i in range(cat.size)), spec.id
