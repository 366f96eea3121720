"""`recaudit simulate --out` names users and items by their ids, beside the indices."""

from __future__ import annotations

import subprocess

import numpy as np
import pandas as pd
import pytest

from auditor.plan import BuiltinPolicy
from auditor.simulate import (
    per_user_frame,
    run_simulation_jobs,
    simulation_jobs,
    trajectory_frame,
)
from simulator.catalog import build_catalog
from simulator.io import resolve_path
from simulator.scenarios import get_scenario
from simulator.specs import with_overrides


def check_ids(per_user: pd.DataFrame, traj: pd.DataFrame, user_ids, item_ids) -> int:
    """Assert every row's ids are the run's ids of its indices; return the clicks seen."""
    users = len(user_ids)
    for _, g in per_user.groupby(["seed", "arm"]):
        assert g.user.tolist() == list(range(users))
        assert g.user_id.astype(str).tolist() == list(user_ids)
    assert traj.user_id.astype(str).tolist() == [user_ids[u] for u in traj.user]
    clicked = traj.item >= 0
    assert traj.item_id[~clicked].isna().all()
    want = [item_ids[i] for i in traj.item[clicked]]
    assert traj.item_id[clicked].astype(str).tolist() == want
    return int(clicked.sum())


@pytest.mark.slow
def test_simulate_exports_movielens_users_and_items_by_the_data_ids(recaudit_bin, tmp_path):
    spec = get_scenario("movielens-100k-v1")
    out = tmp_path / "run"
    users, steps = 7, 3
    proc = subprocess.run(
        [
            recaudit_bin,
            "simulate",
            "--scenario",
            spec.id,
            "--policy",
            "oracle-greedy",
            "--users",
            str(users),
            "--steps",
            str(steps),
            "--seeds",
            "2",
            "--full",
            "--out",
            str(out),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    per_user = pd.read_parquet(out / "per_user.parquet")
    traj = pd.read_parquet(out / "trajectories.parquet")
    assert len(per_user) == 2 * 2 * users and len(traj) == 2 * 2 * (steps + 1) * users
    # the scenario's users, in order: MovieLens user ids, not indices
    table = pd.read_parquet(resolve_path(spec.population.path))
    user_ids = table.user_id.astype(str).tolist()[:users]
    assert user_ids[0] == "1"
    item_ids = build_catalog(spec.catalog, spec.env_seed).item_ids
    assert item_ids[0] == "1"  # movie ids: item 0 is movie 1
    clicks = check_ids(per_user, traj, user_ids, item_ids)
    assert clicks > 0
    # the ids are the movie ids, one above the index: never the index itself
    hit = traj[traj.item >= 0]
    assert (hit.item_id.astype(int) == hit.item + 1).all()


def exports(scenario, users: int, steps: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`recaudit simulate --full --out`'s per-user and trajectory frames of one seed."""
    jobs = simulation_jobs(
        scenario,
        BuiltinPolicy("oracle-greedy"),
        users=users,
        steps=steps,
        seeds=[seed],
        full=True,
        keep_ids=True,
    )
    outcomes = run_simulation_jobs(jobs)
    return per_user_frame(outcomes), trajectory_frame(outcomes)


def test_exports_of_a_synthetic_world_name_users_and_items_by_their_index():
    scenario = get_scenario("topics-tiny-v1")
    per_user, traj = exports(scenario, users=9, steps=4, seed=3)
    cat = build_catalog(scenario.catalog, scenario.env_seed)
    clicks = check_ids(per_user, traj, [str(b) for b in range(9)], cat.item_ids)
    assert clicks > 0
    assert cat.item_ids[:3] == ("0", "1", "2")
    # the frames are pure functions of the run: the same seed gives the same ids
    per_user_again, traj_again = exports(scenario, users=9, steps=4, seed=3)
    pd.testing.assert_frame_equal(traj, traj_again)
    assert np.array_equal(per_user.user_id, per_user_again.user_id)


def test_exports_of_a_file_world_carry_its_own_ids_even_for_redrawn_users(tmp_path):
    """A scenario built on a team's tables (as `recaudit scenario derive` writes them):
    the exports name users and items by the tables' ids; users drawn again from a table
    with fewer rows than users keep distinct ids (``<id>#<index>``)."""
    rng = np.random.default_rng(0)
    items = pd.DataFrame({f"f{d}": rng.normal(size=6) for d in range(3)})
    items["item_id"] = [f"sku-{100 + i}" for i in range(6)]
    people = pd.DataFrame({f"f{d}": rng.normal(size=4) for d in range(3)})
    people["user_id"] = [f"acct{i}" for i in range(4)]
    items.to_parquet(tmp_path / "items.parquet", index=False)
    people.to_parquet(tmp_path / "users.parquet", index=False)
    spec = with_overrides(
        get_scenario("topics-tiny-v1"),
        {
            "catalog": {"kind": "file", "path": str(tmp_path / "items.parquet")},
            "population": {"kind": "file", "path": str(tmp_path / "users.parquet")},
        },
    )
    per_user, traj = exports(spec, users=10, steps=3, seed=1)
    user_ids = per_user[per_user.arm == "policy"].user_id.tolist()
    assert len(set(user_ids)) == 10
    assert all(x.split("#")[0] in set(people.user_id) for x in user_ids)
    assert any("#" in x for x in user_ids)  # 10 users from 4 rows: some are redrawn
    clicks = check_ids(per_user, traj, user_ids, tuple(items.item_id))
    assert clicks > 0
