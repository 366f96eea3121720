"""POST /v1/datasets with the real app: an uploaded log is checked, derived by the real
derivation as a durable job, and becomes a scenario private to its tenant."""

from __future__ import annotations

import io
import json
import pickle
import threading
from contextlib import contextmanager

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from recommenders.derive import synthetic_log
from service.app import create_app, real_execute
from service.datasets import DatasetStore
from service.store import open_engine
from service.uploads import PolicyStore

from .service_helpers import TINY_SPEC, FakeAuditor, auth, make_key, settings, wait_for

PROBLEM = "application/problem+json"
#: a derivation small enough for tests (BPR learns within few batches with a larger step)
OPTIONS = {"epochs": 1, "learning_rate": 0.05, "steps": 5, "slate_size": 3, "dim": 8}


@contextmanager
def service(tmp_path, **overrides):
    s = settings(tmp_path, **overrides)
    fake = FakeAuditor(s)
    with TestClient(create_app(s, execute=fake)) as client:
        client.settings = s  # type: ignore[attr-defined]
        client.key = make_key(s, "acme")  # type: ignore[attr-defined]
        client.other = make_key(s, "globex")  # type: ignore[attr-defined]
        yield client


def csv_bytes(df: pd.DataFrame) -> bytes:
    return df.to_csv(index=False).encode()


def parquet_bytes(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()


def upload(c, log, *, name="log.csv", items=None, scenario_id="shop-v1", options=None, key=None):
    files = {"log": (name, log)}
    if items is not None:
        files["items"] = items
    data = {"scenario_id": scenario_id, "options": json.dumps({**OPTIONS, **(options or {})})}
    return c.post("/v1/datasets", files=files, data=data, headers=auth(key or c.key))


def problem(resp, status, slug=None):
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith(PROBLEM)
    body = resp.json()
    if slug:
        assert body["type"].endswith(slug), body
    return body["detail"]


def leftovers(c) -> list[str]:
    root = c.settings.datasets_root
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


@pytest.fixture(scope="module")
def tiny():
    log, table = synthetic_log(120, 30, 1500, seed=1)
    return log, table


@pytest.mark.slow
def test_upload_derive_list_and_audit_a_private_scenario(tmp_path, tiny):
    log, table = tiny
    with service(tmp_path) as c:
        r = upload(c, csv_bytes(log), items=("items.parquet", parquet_bytes(table)))
        assert r.status_code == 202, r.text
        ds = r.json()
        assert ds["id"].startswith("d") and ds["scenario"] == "shop-v1"
        assert ds["rows"] == 1500 and ds["cost"] == 1500 * 8 * 1
        assert r.headers["location"] == f"/v1/datasets/{ds['id']}"

        def done():
            body = c.get(f"/v1/datasets/{ds['id']}", headers=auth(c.key)).json()
            return body if body["status"] in ("succeeded", "failed") else None

        body = wait_for(done, timeout=120)
        assert body["status"] == "succeeded", body
        prov = body["derivation"]
        assert prov["rows"]["kept"] == 1500 and prov["users"] == log["user_id"].nunique()
        assert prov["polarity"]["axis"] is None  # no attribute named: axis-free

        # listed for its tenant only; another tenant does not see it
        mine = [s["id"] for s in c.get("/v1/scenarios", headers=auth(c.key)).json()]
        theirs = [s["id"] for s in c.get("/v1/scenarios", headers=auth(c.other)).json()]
        assert "shop-v1" in mine and "shop-v1" not in theirs
        assert "topics-tiny-v1" in theirs
        detail = c.get("/v1/scenarios/shop-v1", headers=auth(c.key)).json()
        assert detail["fingerprint"] == prov["fingerprint"]
        assert detail["spec"]["catalog"]["path"] == "items.parquet"  # no server path
        problem(c.get("/v1/scenarios/shop-v1", headers=auth(c.other)), 404)
        problem(c.get(f"/v1/datasets/{ds['id']}", headers=auth(c.other)), 404)

        # an audit of the same tenant names it; axis-free: axis-free default criteria
        spec = {**TINY_SPEC, "scenario": "shop-v1", "users": 10}
        a = c.post("/v1/audits", json=spec, headers=auth(c.key))
        assert a.status_code == 202, a.text
        crit = [x["metric"] for x in a.json()["spec"]["criteria"]]
        assert crit == ["induced_shift", "dispersion"]
        other = c.post("/v1/audits", json=spec, headers=auth(c.other))
        assert "unknown scenario" in problem(other, 422)
        # the scenario id is taken for this tenant
        again = upload(c, csv_bytes(log))
        assert "already has a scenario 'shop-v1'" in problem(again, 422)


def test_delete_stops_a_derivation_during_its_embeddings_training(tmp_path, tiny, monkeypatch):
    """Without a fit the derivation runs in the service's own thread; DELETE stops its
    embeddings' training within a batch, not after the last of its 500 epochs (one batch
    each here, slowed to 10 ms), and nothing is kept."""
    import time

    from recbole.model.general_recommender.bpr import BPR

    batches = [0]
    real = BPR.calculate_loss

    def slow(self, interaction):
        batches[0] += 1
        time.sleep(0.01)
        return real(self, interaction)

    monkeypatch.setattr(BPR, "calculate_loss", slow)
    log, _ = tiny
    with service(tmp_path) as c:
        r = upload(c, csv_bytes(log), options={"epochs": 500})
        assert r.status_code == 202, r.text
        did = r.json()["id"]
        wait_for(lambda: batches[0] >= 3, timeout=120)
        d = c.delete(f"/v1/datasets/{did}", headers=auth(c.key))
        assert d.status_code == 202, d.text

        def ended():
            body = c.get(f"/v1/datasets/{did}", headers=auth(c.key)).json()
            return body if body["status"] in ("cancelled", "succeeded", "failed") else None

        body = wait_for(ended, timeout=120)
        assert body["status"] == "cancelled" and body["derivation"] is None
        wait_for(lambda: not c.app.state.services.dataset_runner.running)  # its thread ended
        assert batches[0] < 250, batches[0]  # of 500
        assert "shop-v1" not in [
            s["id"] for s in c.get("/v1/scenarios", headers=auth(c.key)).json()
        ]


@pytest.mark.slow
def test_the_real_auditor_runs_on_a_tenant_scenario(tmp_path, tiny):
    log, _ = tiny
    s = settings(tmp_path)
    engine = open_engine(s.db_url)
    store = DatasetStore.open(engine, s)
    from service.datasets import DeriveRequest, derive_execute

    request = DeriveRequest(scenario_id="shop-v1", **OPTIONS)
    row = store.submit("acme", request, (csv_bytes(log), "log.csv"), None)
    derive_execute(store)(row, lambda *_: None, threading.Event())
    table = store.jobs.table
    with engine.begin() as conn:  # what the job runner records when the job is done
        conn.execute(table.update().where(table.c.id == row["id"]).values(status="succeeded"))
    assert store.scenario("acme", "shop-v1") is not None
    spec = {**TINY_SPEC, "scenario": "shop-v1", "users": 10, "criteria": []}
    execute = real_execute(s, PolicyStore(engine, s.policies_dir), store)
    audit_row = {"id": "a" + "0" * 16, "tenant": "acme", "spec": json.dumps(spec)}
    out = execute(audit_row, lambda *_: None, threading.Event())
    assert out.verdict in ("pass", "flag", "inconclusive")
    report = json.loads((s.reports_dir / "acme" / audit_row["id"] / "report.json").read_text())
    assert report["provenance"]["scenario_id"] == "shop-v1"
    engine.dispose()


def test_bad_rows_are_422_naming_them_and_nothing_is_kept(tmp_path):
    bad = pd.DataFrame(
        {"user_id": ["a", "b", "c"], "item_id": ["x", "y", "z"], "timestamp": ["1", "soon", "3"]}
    )
    with service(tmp_path) as c:
        detail = problem(upload(c, csv_bytes(bad)), 422, "invalid-dataset")
        assert "unparsable timestamp (timestamp) in row 2 ('soon')" in detail
        missing = bad.drop(columns=["timestamp"])
        assert "no timestamp column" in problem(upload(c, csv_bytes(missing)), 422)
        nan = pd.DataFrame({"user_id": [1.0, None], "item_id": [1, 2], "timestamp": [1.0, 2.0]})
        detail = problem(upload(c, parquet_bytes(nan), name="log.parquet"), 422)
        assert "missing user (user_id) in row 2" in detail
        good = pd.DataFrame({"user_id": ["a"], "item_id": ["x"], "timestamp": [1]})
        dup = pd.DataFrame({"item_id": ["x", "x"]})
        detail = problem(upload(c, csv_bytes(good), items=("items.csv", csv_bytes(dup))), 422)
        assert "item id 'x' appears more than once (rows 1, 2)" in detail
        assert leftovers(c) == []
        assert c.get("/v1/scenarios/shop-v1", headers=auth(c.key)).status_code == 404


def test_only_csv_and_parquet_are_taken(tmp_path):
    evil = pickle.dumps({"user_id": [1]})
    with service(tmp_path) as c:
        assert "pickle" in problem(upload(c, evil, name="log.parquet"), 415)
        assert "pickle" in problem(upload(c, evil, name="log.csv"), 415)
        assert "not a parquet file" in problem(upload(c, b"user,item\n", name="log.parquet"), 415)
        assert ".csv or .parquet" in problem(upload(c, b"{}", name="log.json"), 415)
        assert leftovers(c) == []


def test_over_budget_and_oversized_uploads_are_refused(tmp_path, tiny):
    log, _ = tiny
    with service(tmp_path, max_derive_cost=10_000, max_upload_bytes=64 * 1024) as c:
        detail = problem(upload(c, csv_bytes(log)), 422, "budget")
        assert "1,500 rows x 8 dimensions x 1 epochs = 12,000" in detail
        big = csv_bytes(pd.concat([log] * 20))
        problem(upload(c, big), 413)
        bad = upload(c, csv_bytes(log), options={"dim": 0})
        assert "dim" in problem(bad, 422)
        bad = upload(c, csv_bytes(log), options={"dynamics": {"kind": "warp"}})
        assert "dynamics" in problem(bad, 422)
        assert leftovers(c) == []


def test_staging_of_killed_dataset_uploads_is_removed_on_start(tmp_path):
    import os
    import socket
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    root = tmp_path / "datasets"
    dead = root / f".upload-{socket.gethostname()}.{proc.pid}.abc"
    live = root / f".upload-{socket.gethostname()}.{os.getpid()}.def"
    for d in (dead, live):
        d.mkdir(parents=True)
        (d / "log.csv").write_text("user,item,timestamp\n")
    with service(tmp_path):
        pass
    assert sorted(p.name for p in root.iterdir()) == [live.name]
