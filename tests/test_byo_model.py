"""Bring your own model: a RecBole checkpoint converted by its owner (``recaudit model
convert``), its own ids kept, matched to a scenario by id."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from recaudit.cli import main
from recommenders import recbole as ra

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


def test_a_model_with_unknown_ids_is_refused_with_exact_counts(shop_checkpoint, tmp_path, capsys):
    """A model that speaks SKUs cannot be audited on a catalog of other ids: refused
    before anything runs, from the CLI (exit 2) and over REST (422), with the counts and
    the first missing ids."""
    from fastapi.testclient import TestClient

    from service.app import create_app

    from .service_helpers import TINY_SPEC, FakeAuditor, auth, make_key, settings

    ckpt, _ = shop_checkpoint
    out = tmp_path / "bundle"
    assert main(["model", "convert", str(ckpt), "--out", str(out), "--trust-pickle"]) == 0
    capsys.readouterr()
    want = (
        "does not know 30 of the scenario's 30 catalog items (first missing item ids: "
        "'0', '1', '2', '3', '4')"
    )
    argv = ["audit", "--scenario", "topics-tiny-v1", "--policy", f"bundle:{out}"]
    assert main([*argv, "--references", "natural", "--in-process", "--no-track"]) == 2
    assert want in capsys.readouterr().err
    s = settings(tmp_path / "home")
    with TestClient(create_app(s, execute=FakeAuditor(s))) as c:
        key = make_key(s, "acme")
        files = {
            "weights": ("model.safetensors", (out / "model.safetensors").read_bytes()),
            "config": ("model.json", (out / "model.json").read_bytes()),
        }
        pid = c.post("/v1/policies", files=files, headers=auth(key)).json()["id"]
        spec = {**TINY_SPEC, "policy": {"kind": "uploaded", "params": {"id": pid}}}
        r = c.post("/v1/audits", json=spec, headers=auth(key))
        assert r.status_code == 422 and want in r.json()["detail"]
        # the CLI's bundle kind reads the disk: the service does not take it
        spec = {**TINY_SPEC, "policy": {"kind": "bundle", "params": {"path": str(out)}}}
        r = c.post("/v1/audits", json=spec, headers=auth(key))
        assert r.status_code == 422 and "bundle" in r.json()["detail"]


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ("bundle:", "write bundle:PATH"),
        ("bundle:/nonexistent/dir", "no such directory"),
        ("remote:http://127.0.0.1:9/act", "the operator allows no remote hosts"),
        ("remote:ftp://127.0.0.1/", "must use http or https"),
    ],
)
def test_cli_policy_sources_are_checked_before_anything_runs(policy, message, monkeypatch, capsys):
    monkeypatch.delenv("RECAUDIT_REMOTE_ALLOWLIST", raising=False)
    argv = ["audit", "--scenario", "topics-tiny-v1", "--policy", policy, "--in-process"]
    assert main([*argv, "--no-track"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
