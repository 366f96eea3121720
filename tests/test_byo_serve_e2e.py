"""Bring your own data and model, end to end over REST against a real `recaudit serve`
on loopback (real components, no mocks): a log file written here and RecBole's bundled
ml-100k are uploaded to ``POST /v1/datasets`` and derived into tenant-private scenarios;
a BPR trained by RecBole's own pipeline on the same ml-100k is converted by ``recaudit
model convert``, uploaded, and audited on the derived scenario against natural and
myopic references; the report names the model's ids and counts unknown items and
cold users (zero here: the derived users carry the data's own ids)."""

from __future__ import annotations

import io
import json

import httpx
import numpy as np
import pandas as pd
import pytest

from recaudit.cli import main
from recommenders.ml100k import ml100k_dir

from .byo_helpers import train_recbole_checkpoint
from .service_helpers import free_port, start_group, stop_group, wait_for, wait_http
from .test_service_e2e import base_env, create_key, finish, serve_cmd

pytestmark = pytest.mark.slow

#: a derivation small enough for a test (as in test_service_datasets)
OPTIONS = {"epochs": 1, "learning_rate": 0.05, "steps": 5, "slate_size": 3, "dim": 8}


def small_log() -> pd.DataFrame:
    """40 users u0..u39, each with 10 of ml-100k's movie ids, timestamps increasing."""
    rng = np.random.default_rng(0)
    rows = [
        (f"u{u}", str(item), 880_000_000 + 3600 * (10 * u + k), int(rng.integers(1, 6)))
        for u in range(40)
        for k, item in enumerate(rng.choice(np.arange(1, 201), size=10, replace=False))
    ]
    return pd.DataFrame(rows, columns=["user", "item", "timestamp", "rating"])


def ml100k_csv() -> bytes:
    """RecBole's bundled ml-100k interactions as CSV: user, item, timestamp, rating."""
    inter = pd.read_csv(ml100k_dir() / "ml-100k.inter", sep="\t", dtype=str)
    inter.columns = [c.split(":")[0] for c in inter.columns]
    df = inter.rename(columns={"user_id": "user", "item_id": "item"})
    return df[["user", "item", "timestamp", "rating"]].to_csv(index=False).encode()


def derive(c: httpx.Client, name: str, data: bytes, scenario_id: str) -> dict:
    files = {"log": (name, data)}
    form = {"scenario_id": scenario_id, "options": json.dumps(OPTIONS)}
    r = c.post("/v1/datasets", files=files, data=form)
    assert r.status_code == 202, r.text
    ds = r.json()

    def done():
        body = c.get(f"/v1/datasets/{ds['id']}").json()
        return body if body["status"] in ("succeeded", "failed") else None

    body = wait_for(done, timeout=600, every=0.5)
    assert body["status"] == "succeeded", body
    return body


def test_a_log_and_ml100k_derived_a_recbole_bpr_uploaded_and_audited_over_serve(tmp_path):
    # the model: RecBole's own pipeline on its bundled ml-100k, converted by its owner
    (tmp_path / "train").mkdir()
    ckpt = train_recbole_checkpoint(tmp_path / "train", "ml-100k", epochs=1)
    bundle = tmp_path / "bundle"
    assert main(["model", "convert", str(ckpt), "--out", str(bundle), "--trust-pickle"]) == 0
    meta = json.loads((bundle / "model.json").read_text())

    home = tmp_path / "home"
    env = base_env(home)
    env.update(RAY_ADDRESS="none", RECAUDIT_TRACK="0")
    key = create_key(env, "acme")
    other = create_key(env, "globex")
    port = free_port()
    proc = start_group(serve_cmd(port), env, tmp_path / "serve.log")
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/healthz", timeout=120, proc=proc)
        with (
            httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as c,
            httpx.Client(base_url=url, headers={"Authorization": f"Bearer {other}"}) as c2,
        ):
            # (1) a log file written here: derived, private to its tenant
            log = small_log()
            buf = io.BytesIO()
            log.to_csv(buf, index=False)
            small = derive(c, "shop.csv", buf.getvalue(), "shop-v1")
            assert small["derivation"]["rows"]["kept"] == 400
            assert small["derivation"]["users"] == 40
            assert "shop-v1" in [s["id"] for s in c.get("/v1/scenarios").json()]
            assert "shop-v1" not in [s["id"] for s in c2.get("/v1/scenarios").json()]
            assert c2.get("/v1/scenarios/shop-v1").status_code == 404

            # (2) RecBole's bundled ml-100k, uploaded as CSV and derived
            ml = derive(c, "ml-100k.csv", ml100k_csv(), "ml100k-v1")
            assert ml["derivation"]["rows"]["kept"] == 100_000
            assert ml["derivation"]["users"] == 943
            assert "ml100k-v1" in [s["id"] for s in c.get("/v1/scenarios").json()]

            # (3) the converted bundle uploaded (the pickle itself is refused)
            config = ("model.json", (bundle / "model.json").read_bytes())
            files = {"weights": ("model.safetensors", ckpt.read_bytes()), "config": config}
            assert c.post("/v1/policies", files=files).status_code == 415
            files = {
                "weights": ("model.safetensors", (bundle / "model.safetensors").read_bytes()),
                "config": config,
            }
            r = c.post("/v1/policies", files=files)
            assert r.status_code == 201, r.text
            up = r.json()
            assert (up["num_items"], up["num_users"]) == (1682, 943)

            # (4) audited on the derived scenario against natural and myopic references
            spec = {
                "scenario": "ml100k-v1",
                "policy": {"kind": "uploaded", "params": {"id": up["id"]}},
                "references": [{"kind": "natural"}, {"kind": "myopic"}],
                "users": 100,
                "steps": 3,
                "replicates": 2,
                "seed": 0,
            }
            r = c.post("/v1/audits", json=spec)
            assert r.status_code == 202, r.text
            body = finish(c, r.json()["id"], timeout=600)
            assert body["status"] == "succeeded", body["error"]
            report = c.get(f"/v1/audits/{body['id']}/report").json()
            assert c2.get(f"/v1/audits/{body['id']}/report").status_code == 404
    finally:
        stop_group(proc)

    assert report["provenance"]["scenario_id"] == "ml100k-v1"
    assert [a["kind"] for a in report["arms"]] == ["uploaded", "natural", "myopic"]
    b = report["arms"][0]["boundary"]
    assert b["kind"] == "RecBole BPR trained on 'ml-100k'"
    # the model's own ids, named; every catalog item known; every simulated user is the
    # model's user with the same data id, so none is cold
    assert b["model_item_examples"] == meta["item_tokens"][1:6]
    assert b["model_user_examples"] == meta["user_tokens"][1:6]
    assert (b["catalog_items"], b["model_items"], b["unknown_items"]) == (1682, 1682, 0)
    assert b["model_items_outside_catalog"] == 0
    assert (b["users"], b["model_users"], b["cold_users"]) == (100, 943, [0, 0])
    assert "the model's user with the scenario's user id" in b["rule"]
    assert report["verdict"] in ("pass", "flag", "inconclusive")
