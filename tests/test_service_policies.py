"""Policy intake: uploaded RecBole models (safetensors + JSON only; pickles and torch
checkpoints refused by content, nothing kept from a refused upload) and their audit."""

from __future__ import annotations

import hashlib
import json
import pickle
from contextlib import contextmanager

import numpy as np
import pandas as pd
import pytest
import torch
from fastapi.testclient import TestClient

from recommenders import recbole as ra
from service.app import create_app
from simulator.errors import SpecError

from .service_helpers import TINY_SPEC, FakeAuditor, auth, make_key, settings, wait_for

PROBLEM = "application/problem+json"
N_ITEMS = 30  # topics-tiny-v1's catalog


@pytest.fixture(scope="module")
def bpr_files(tmp_path_factory):
    """A tiny BPR trained on a log that knows items '0'..'29' and users '0'..'19'."""
    tmp = tmp_path_factory.mktemp("bpr")
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(20), 6)
    items = (users % 3) * 10 + rng.integers(0, 10, users.size)
    log = pd.DataFrame({"user": users, "item": items, "timestamp": np.tile(np.arange(6.0), 20)})
    genres = pd.Series([f"t{i // 10}" for i in range(N_ITEMS)], index=range(N_ITEMS))
    ra.write_atomic_files(log, tmp / "data", "tiny", item_genres=genres)
    tm = ra.train_model(
        "BPR",
        tmp / "data",
        "tiny",
        epochs=2,
        seed=0,
        extra_config={
            "embedding_size": 8,
            "learning_rate": 0.05,
            "eval_args": {"split": {"RS": [1.0, 0.0, 0.0]}, "order": "TO", "mode": "full"},
        },
    )
    out = ra.save_model(tm, tmp / "model")
    return (out / "model.json").read_bytes(), (out / "model.safetensors").read_bytes(), tm


@contextmanager
def service(tmp_path, execute=None, **overrides):
    s = settings(tmp_path, **overrides)
    fake = execute or FakeAuditor(s)
    with TestClient(create_app(s, execute=fake)) as c:
        c.key = make_key(s, "acme")  # type: ignore[attr-defined]
        c.other = make_key(s, "globex")  # type: ignore[attr-defined]
        c.settings = s  # type: ignore[attr-defined]
        yield c


def upload(c, config, weights, key=None, name=None):
    files = {
        "weights": ("model.safetensors", weights, "application/octet-stream"),
        "config": ("model.json", config, "application/json"),
    }
    data = {"name": name} if name else None
    return c.post("/v1/policies", files=files, data=data, headers=auth(key or c.key))


def kept_files(c):
    root = c.settings.policies_dir
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _problem(r, status, slug):
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    assert r.json()["type"] == f"urn:recaudit:problem:{slug}"
    return r.json()


class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_valid_upload_is_kept_and_listed_for_its_tenant_only(tmp_path, bpr_files):
    config, weights, _ = bpr_files
    with service(tmp_path) as c:
        r = upload(c, config, weights, name="bpr-v3")
        assert r.status_code == 201, r.text
        body = r.json()
        pid = body["id"]
        assert body["name"] == "bpr-v3" and body["model"] == "BPR"
        assert body["model_type"] == "general"
        assert body["num_items"] == N_ITEMS and body["num_users"] == 20
        assert body["sha256"] == hashlib.sha256(weights).hexdigest()
        assert body["usage"] == {"kind": "uploaded", "params": {"id": pid}, "label": None}
        assert kept_files(c) == [f"acme/{pid}/model.json", f"acme/{pid}/model.safetensors"]
        assert c.get(f"/v1/policies/{pid}", headers=auth(c.key)).json() == body
        assert c.get("/v1/policies", headers=auth(c.key)).json()["uploaded"] == [body]
        _problem(c.get(f"/v1/policies/{pid}", headers=auth(c.other)), 404, "not-found")
        assert c.get("/v1/policies", headers=auth(c.other)).json()["uploaded"] == []
        # another tenant cannot audit it either
        spec = {**TINY_SPEC, "policy": {"kind": "uploaded", "params": {"id": pid}}}
        r = c.post("/v1/audits", json=spec, headers=auth(c.other))
        assert "no uploaded policy" in _problem(r, 422, "invalid-spec")["detail"]
        assert c.post("/v1/audits", json=spec, headers=auth(c.key)).status_code == 202


def test_a_pickle_is_refused_with_415_and_never_unpickled(tmp_path, bpr_files, monkeypatch):
    config, _, _ = bpr_files
    marker = tmp_path / "unpickled"
    evil = pickle.dumps(_Evil(marker))

    def boom(*a, **k):
        raise AssertionError("something unpickled")

    monkeypatch.setattr(pickle, "loads", boom)
    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(torch, "load", boom)
    with service(tmp_path) as c:
        body = _problem(upload(c, config, evil), 415, "unsupported-upload")
        assert "pickle" in body["detail"]
        body = _problem(upload(c, evil, evil), 415, "unsupported-upload")
        assert kept_files(c) == []
        assert c.get("/v1/policies", headers=auth(c.key)).json()["uploaded"] == []
    assert not marker.exists()


def test_a_torch_checkpoint_is_refused_with_415(tmp_path, bpr_files):
    config, _, tm = bpr_files
    path = tmp_path / "ckpt.pt"
    torch.save(tm.model.state_dict(), path)
    with service(tmp_path) as c:
        body = _problem(upload(c, config, path.read_bytes()), 415, "unsupported-upload")
        assert "zip archive" in body["detail"]
        body = _problem(upload(c, b"\xff\xfe not json", b"x" * 64), 415, "unsupported-upload")
        assert kept_files(c) == []


def _edited(config: bytes, **changes) -> bytes:
    meta = json.loads(config)
    meta.update(changes)
    return json.dumps(meta).encode()


def test_unknown_classes_and_wrong_shapes_are_422_and_leave_nothing(tmp_path, bpr_files):
    config, weights, tm = bpr_files
    from safetensors.torch import save as st_save

    with service(tmp_path) as c:
        body = _problem(
            upload(c, _edited(config, model="LightGCN"), weights), 422, "invalid-upload"
        )
        assert "'LightGCN' is not allowed" in body["detail"]
        # an item id map that does not match the weights' shapes (one item fewer)
        meta = json.loads(config)
        fewer = _edited(config, item_tokens=meta["item_tokens"][:-1])
        body = _problem(upload(c, fewer, weights), 422, "invalid-upload")
        assert "wrong tensor shapes" in body["detail"] and "item_embedding" in body["detail"]
        # weights of the wrong shape (with a matching hash)
        sd = {k: v.clone() for k, v in tm.model.state_dict().items()}
        sd["item_embedding.weight"] = torch.zeros(5, 8)
        bad = st_save(sd)
        fixed = _edited(config, weights_sha256=hashlib.sha256(bad).hexdigest())
        body = _problem(upload(c, fixed, bad), 422, "invalid-upload")
        assert "(5, 8)" in body["detail"]
        # weights that do not match the recorded hash
        body = _problem(upload(c, config, bad), 422, "invalid-upload")
        assert "SHA-256" in body["detail"]
        assert kept_files(c) == []
        assert [p.name for p in c.settings.policies_dir.iterdir()] == []  # no staging left


def test_an_oversized_upload_is_413(tmp_path, bpr_files):
    config, weights, _ = bpr_files
    with service(tmp_path, max_upload_bytes=2048) as c:
        body = _problem(upload(c, config, weights), 413, "too-large")
        assert "2048 bytes" in body["detail"]
        assert kept_files(c) == []


def test_a_model_that_does_not_know_the_catalog_is_refused_at_submission(tmp_path, bpr_files):
    config, weights, _ = bpr_files
    with service(tmp_path) as c:
        pid = upload(c, config, weights).json()["id"]
        spec = {
            **TINY_SPEC,
            "scenario": "biased-assimilation-v1",  # 200 items; the model knows 30
            "policy": {"kind": "uploaded", "params": {"id": pid}},
        }
        body = _problem(c.post("/v1/audits", json=spec, headers=auth(c.key)), 422, "invalid-spec")
        assert "does not know 170 of the scenario's 200 catalog items" in body["detail"]


def _ctx(users, catalog, user_ids=()):
    from simulator.policy import PolicyContext

    return PolicyContext(
        num_users=users,
        slate_size=3,
        catalog=catalog,
        generator=torch.Generator().manual_seed(0),
        device=torch.device("cpu"),
        user_ids=user_ids,
    )


def test_frozen_policy_serves_the_users_it_knows_by_id_and_never_retrains(bpr_files):
    """Users with the data's ids the model knows get its top-k; the others (counted) get
    the model's mean user; feedback never changes a slate."""
    from simulator.catalog import build_catalog
    from simulator.scenarios import get_scenario
    from simulator.types import Feedback, Observation

    config, weights, tm = bpr_files
    policy = ra.UploadedModelFactory(config=config, weights=weights)()
    catalog = build_catalog(get_scenario("topics-tiny-v1").catalog, 0)
    ids = tuple(str(b) for b in range(20)) + tuple(f"new-{b}" for b in range(5))
    policy.reset(_ctx(25, catalog, ids))
    slate = policy.act(Observation(t=0, num_users=25))
    known = tm.user_ids([str(b) for b in range(20)])
    item_map = tm.item_ids([str(i) for i in range(N_ITEMS)])
    scores = tm.score_users(known)[:, item_map]
    assert torch.equal(slate[:20], scores.topk(3, dim=1).indices)
    everyone = tm.score_users(torch.arange(1, len(tm.user_tokens)))[:, item_map]
    mean_user = everyone.double().mean(dim=0).topk(3).indices
    assert all(torch.equal(row, mean_user) for row in slate[20:])
    for t in range(6):  # feedback never changes a slate
        policy.update(
            Feedback(t=t, slate=slate, slot=torch.zeros(25, dtype=torch.long), item=slate[:, 0])
        )
    assert torch.equal(policy.act(Observation(t=6, num_users=25)), slate)
    assert policy.train_seconds == []
    b = policy.boundary()
    assert (b["users"], b["model_users"], b["cold_users"]) == (25, 20, 5)
    assert b["cold_user_examples"] == ["new-0", "new-1", "new-2", "new-3", "new-4"]
    assert (b["catalog_items"], b["model_items"], b["unknown_items"]) == (30, 30, 0)
    assert "mean user" in b["rule"]
    with pytest.raises(SpecError, match="does not know 170 of the scenario's 200"):
        policy.reset(_ctx(5, build_catalog(get_scenario("biased-assimilation-v1").catalog, 0)))


def test_synthetic_users_are_never_taken_for_the_models_users(bpr_files):
    """Simulated user b of a synthetic population is not the model's user "b": every
    user is cold, served the model's mean user, and the count says so."""
    from simulator.catalog import build_catalog
    from simulator.scenarios import get_scenario
    from simulator.types import Observation

    config, weights, _tm = bpr_files
    policy = ra.UploadedModelFactory(config=config, weights=weights)()
    policy.reset(_ctx(25, build_catalog(get_scenario("topics-tiny-v1").catalog, 0)))
    slate = policy.act(Observation(t=0, num_users=25))
    assert (slate == slate[0]).all()
    b = policy.boundary()
    assert b["cold_users"] == 25 and "synthetic" in b["rule"]


def test_an_uploaded_model_is_audited_end_to_end(tmp_path, bpr_files):
    """The real auditor in process: the uploaded model is an arm of the report."""
    config, weights, _ = bpr_files
    s = settings(tmp_path)
    from service.app import real_execute
    from service.store import open_engine
    from service.uploads import PolicyStore

    engine = open_engine(s.db_url)
    execute = real_execute(s, PolicyStore(engine, s.policies_dir))
    with service(tmp_path, execute=execute) as c:
        pid = upload(c, config, weights).json()["id"]
        spec = {**TINY_SPEC, "policy": {"kind": "uploaded", "params": {"id": pid}}}
        aid = c.post("/v1/audits", json=spec, headers=auth(c.key)).json()["id"]

        def done():
            b = c.get(f"/v1/audits/{aid}", headers=auth(c.key)).json()
            return b if b["status"] in ("succeeded", "failed") else None

        body = wait_for(done, timeout=120)
        assert body["status"] == "succeeded", body["error"]
        report = c.get(f"/v1/audits/{aid}/report", headers=auth(c.key)).json()
        assert report["id"] == aid
        assert [a["kind"] for a in report["arms"]] == ["uploaded", "natural", "popularity"]
        assert report["verdict"] == body["verdict"]
        eng = report["metrics"]["policy"]["engagement"]["mean"]
        assert eng is not None and 0.0 <= eng <= 1.0
        # the report states how the model met the scenario's ids, and the counts
        b = report["arms"][0]["boundary"]
        assert (b["catalog_items"], b["model_items"], b["unknown_items"]) == (30, 30, 0)
        assert b["users"] == 20 and b["cold_users"] == [20, 20] and "synthetic" in b["rule"]
        assert b["kind"] == "RecBole BPR trained on 'tiny'"
        html = c.get(f"/v1/audits/{aid}/report.html", headers=auth(c.key)).text
        assert "Ids at the boundary" in html and "mean user" in html
    engine.dispose()
