"""Bring your own recommender, end to end with real components (no mocks):

- a BPR trained by RecBole's own pipeline on RecBole's bundled ml-100k, its checkpoint
  converted by ``recaudit model convert``, uploaded to the real app and audited on
  ``movielens-100k-v1`` against natural and myopic references; and the same bundle
  audited from the CLI;
- a remote recommender on loopback that knows only its own string item ids (movie ids,
  no features), audited by ids from the CLI and over REST.
"""

from __future__ import annotations

import json

import pytest

from recaudit.cli import main

from .byo_helpers import train_recbole_checkpoint
from .service_helpers import auth, finish_audit, real_service
from .service_policy_server import PolicyServer

pytestmark = pytest.mark.slow

MOVIES = [str(m) for m in range(1, 1683)]
AUDIT = {"users": 200, "steps": 5, "replicates": 2, "seed": 0}


@pytest.fixture(scope="module")
def ml100k_bundle(tmp_path_factory):
    """RecBole's pipeline, 1 epoch on the bundled ml-100k -> .pth -> converted bundle."""
    tmp = tmp_path_factory.mktemp("ml100k")
    ckpt = train_recbole_checkpoint(tmp, "ml-100k", epochs=1)
    out = tmp / "bundle"
    assert main(["model", "convert", str(ckpt), "--out", str(out), "--trust-pickle"]) == 0
    return ckpt, out


def _upload(c, config: bytes, weights: bytes):
    files = {
        "weights": ("model.safetensors", weights, "application/octet-stream"),
        "config": ("model.json", config, "application/json"),
    }
    return c.post("/v1/policies", files=files, headers=auth(c.key))


def test_a_recbole_trained_model_is_converted_uploaded_and_audited_over_rest(
    tmp_path, ml100k_bundle
):
    ckpt, bundle = ml100k_bundle
    config = (bundle / "model.json").read_bytes()
    meta = json.loads(config)
    with real_service(tmp_path) as c:
        # the checkpoint itself is a pickle: still refused, never unpickled
        r = _upload(c, config, ckpt.read_bytes())
        assert r.status_code == 415, r.text
        r = _upload(c, config, (bundle / "model.safetensors").read_bytes())
        assert r.status_code == 201, r.text
        up = r.json()
        assert (up["num_items"], up["num_users"]) == (1682, 943)
        spec = {
            "scenario": "movielens-100k-v1",
            "policy": {"kind": "uploaded", "params": {"id": up["id"]}},
            "references": [{"kind": "natural"}, {"kind": "myopic"}],
            **AUDIT,
        }
        r = c.post("/v1/audits", json=spec, headers=auth(c.key))
        assert r.status_code == 202, r.text
        body = finish_audit(c, r.json()["id"], timeout=600)
        assert body["status"] == "succeeded", body["error"]
        report = c.get(f"/v1/audits/{body['id']}/report", headers=auth(c.key)).json()
        html = c.get(f"/v1/audits/{body['id']}/report.html", headers=auth(c.key)).text
    assert [a["kind"] for a in report["arms"]] == ["uploaded", "natural", "myopic"]
    b = report["arms"][0]["boundary"]
    assert b["kind"] == "RecBole BPR trained on 'ml-100k'"
    # the model's own ids, named; every catalog item and every simulated user known
    assert b["model_item_examples"] == meta["item_tokens"][1:6]
    assert b["model_user_examples"] == meta["user_tokens"][1:6]
    assert (b["catalog_items"], b["model_items"], b["unknown_items"]) == (1682, 1682, 0)
    assert b["model_items_outside_catalog"] == 0
    assert (b["users"], b["model_users"], b["cold_users"]) == (200, 943, [0, 0])
    assert "the model's user with the scenario's user id" in b["rule"]
    assert "Ids at the boundary" in html and ", ".join(meta["item_tokens"][1:6]) in html
    assert report["verdict"] in ("pass", "flag", "inconclusive")


def test_the_same_bundle_is_audited_from_the_cli(tmp_path, ml100k_bundle, capsys):
    _, bundle = ml100k_bundle
    code = main(
        [
            "audit",
            "--scenario",
            "movielens-100k-v1",
            "--policy",
            f"bundle:{bundle}",
            "--references",
            "natural,myopic",
            "--users",
            "200",
            "--steps",
            "5",
            "--replicates",
            "2",
            "--in-process",
            "--no-track",
            "--no-progress",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    out = capsys.readouterr().out
    assert code in (0, 1, 3), out
    assert "ids at the boundary:" in out
    assert (
        "policy (RecBole BPR trained on 'ml-100k'): 1682 catalog items matched by id to the "
        "model's 1682 (0 unknown, 0 of the model's not in the catalog); 200 users per "
        "replicate, the model knows 943; cold-start users per replicate: 0, 0." in out
    )
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["arms"][0]["kind"] == "bundle"
    assert report["arms"][0]["boundary"]["cold_users"] == [0, 0]


def _remote_checks(server: PolicyServer, report: dict) -> None:
    assert {r["protocol"] for r in server.requests} == {"recaudit.remote-policy/v2"}
    assert server.requests[0]["catalog"] == {"item_ids": MOVIES}  # no features
    clicked = {h for r in server.requests for u in r["users"] for h in u["history"]}
    assert clicked and clicked <= set(MOVIES)
    assert all(u["id"].startswith("sim-") for r in server.requests for u in r["users"])
    b = report["arms"][0]["boundary"]
    assert b["kind"] == "recaudit.remote-policy/v2" and b["catalog_items"] == 1682


def test_a_remote_recommender_that_knows_only_its_ids_is_audited_from_the_cli(
    tmp_path, monkeypatch, capsys
):
    with PolicyServer(item_ids=list(reversed(MOVIES))) as server:
        argv = [
            "audit",
            "--scenario",
            "movielens-100k-v1",
            "--policy",
            f"remote:{server.url()}",
            "--references",
            "natural",
            "--users",
            "100",
            "--steps",
            "3",
            "--replicates",
            "2",
            "--in-process",
            "--no-track",
            "--no-progress",
            "--json",
        ]
        monkeypatch.setenv("RECAUDIT_REMOTE_TIMEOUT_S", "60")  # a loaded machine is slow
        monkeypatch.setenv("RECAUDIT_REMOTE_ALLOWLIST", "example.org")
        assert main(argv) == 2  # not on the allowlist: refused before any connection
        assert "not on the operator's allowlist (example.org)" in capsys.readouterr().err
        assert server.hits["/act"] == 0
        monkeypatch.setenv("RECAUDIT_REMOTE_ALLOWLIST", f"127.0.0.1:{server.port}")
        code = main(argv)
        captured = capsys.readouterr()
        assert code in (0, 1, 3), captured.err
        report = json.loads(captured.out)
        _remote_checks(server, report)
        assert len(server.requests) == 2 * 3  # replicates x steps, one batch each


def test_a_remote_recommender_that_knows_only_its_ids_is_audited_over_rest(tmp_path):
    with PolicyServer(item_ids=list(reversed(MOVIES))) as server:
        with real_service(tmp_path, remote_allowlist=(f"127.0.0.1:{server.port}",)) as c:
            spec = {
                "scenario": "movielens-100k-v1",
                "policy": {"kind": "remote", "params": {"url": server.url(), "history": 5}},
                "references": [{"kind": "natural"}],
                "users": 100,
                "steps": 3,
                "replicates": 2,
            }
            body = finish_audit(
                c, c.post("/v1/audits", json=spec, headers=auth(c.key)).json()["id"], timeout=600
            )
            assert body["status"] == "succeeded", body["error"]
            report = c.get(f"/v1/audits/{body['id']}/report", headers=auth(c.key)).json()
        _remote_checks(server, report)
        assert max(len(u["history"]) for r in server.requests for u in r["users"]) <= 5
