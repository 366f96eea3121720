"""Bring your own model: a RecBole checkpoint converted by its owner (``recaudit model
convert``), its own ids kept, matched to a scenario by id."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from recaudit.cli import main
from recommenders import recbole_adapter as ra

from .byo_helpers import train_recbole_checkpoint

N_ITEMS, N_USERS = 30, 20
SKUS = [f"sku-{i:03d}" for i in range(N_ITEMS)]
PEOPLE = [f"acct-{b:02d}" for b in range(N_USERS)]


@pytest.fixture(scope="module")
def shop_checkpoint(tmp_path_factory):
    """A BPR trained by RecBole's own pipeline on a shop log with string ids; returns
    (checkpoint, data dir)."""
    tmp = tmp_path_factory.mktemp("shop")
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(N_USERS), 8)
    items = (users % 3) * 10 + rng.integers(0, 10, users.size)
    log = pd.DataFrame(
        {
            "user": [PEOPLE[u] for u in users],
            "item": [SKUS[i] for i in items],
            "timestamp": np.tile(np.arange(8.0), N_USERS),
        }
    )
    genres = pd.Series([f"t{i // 10}" for i in range(N_ITEMS)], index=SKUS)
    ra.write_atomic_files(log, tmp / "data", "shop", item_genres=genres)
    ckpt = train_recbole_checkpoint(
        tmp,
        "shop",
        data_path=tmp / "data",
        extra={"load_col": {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id"]}},
    )
    return ckpt, tmp / "data" / "shop"


def test_convert_refuses_a_pickle_without_the_explicit_flag(shop_checkpoint, tmp_path, capsys):
    ckpt, _ = shop_checkpoint
    assert main(["model", "convert", str(ckpt), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "is a Python pickle" in err and "--trust-pickle" in err
    assert "Traceback" not in err
    assert not (tmp_path / "b").exists()


def test_convert_keeps_the_models_own_ids_and_weights(shop_checkpoint, tmp_path, capsys):
    ckpt, data_dir = shop_checkpoint
    out = tmp_path / "bundle"
    code = main(["model", "convert", str(ckpt), "--out", str(out), "--trust-pickle", "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["model"] == "BPR" and summary["dataset"] == "shop"
    assert (summary["num_items"], summary["num_users"]) == (N_ITEMS, N_USERS)
    tm = ra.load_model(out)  # the service's loader: no pickle
    assert sorted(tm.item_tokens[1:]) == SKUS and sorted(tm.user_tokens[1:]) == PEOPLE
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    for name, tensor in tm.model.state_dict().items():
        assert torch.equal(tensor, state[name]), name
    # the same ids RecBole gives when it rebuilds the dataset itself
    assert tm.item_tokens[:3] == [
        "[PAD]",
        *pd.read_csv(data_dir / "shop.inter", sep="\t")["item_id:token"].drop_duplicates()[:2],
    ]
    # a second convert into the same directory is refused
    assert main(["model", "convert", str(ckpt), "--out", str(out), "--trust-pickle"]) == 2
    assert "not empty" in capsys.readouterr().err


def test_convert_names_a_missing_data_path(shop_checkpoint, tmp_path, capsys):
    ckpt, _ = shop_checkpoint
    code = main(
        [
            "model",
            "convert",
            str(ckpt),
            "--out",
            str(tmp_path / "b"),
            "--trust-pickle",
            "--data-path",
            str(tmp_path / "nowhere"),
        ]
    )
    assert code == 2
    assert "shop.inter is not there: give --data-path" in capsys.readouterr().err
