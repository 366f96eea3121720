"""The service against a hostile tenant: budgets for everything a request implies,
refusals before anything large is built or read, authentication before bodies, bounded
uploads and headers, fair scheduling between tenants, leftovers cleaned."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from contextlib import contextmanager

import pytest
import torch
from fastapi.testclient import TestClient

from service.app import create_app

from .service_helpers import TINY_SPEC, FakeAuditor, auth, make_key, settings, wait_for

PROBLEM = "application/problem+json"


@contextmanager
def service(tmp_path, *, hold=False, execute=None, **overrides):
    s = settings(tmp_path, **overrides)
    fake = execute or FakeAuditor(s, hold=hold)
    with TestClient(create_app(s, execute=fake)) as client:
        client.fake = fake  # type: ignore[attr-defined]
        client.settings = s  # type: ignore[attr-defined]
        client.key = make_key(s, "acme")  # type: ignore[attr-defined]
        client.other = make_key(s, "globex")  # type: ignore[attr-defined]
        yield client
        if hasattr(fake, "gate"):
            fake.gate.set()


def _problem(resp, status, slug=None):
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith(PROBLEM)
    body = resp.json()
    if slug:
        assert body["type"] == f"urn:recaudit:problem:{slug}", body
    return body


def _inline(**catalog):
    from simulator.scenarios import get_scenario

    scenario = get_scenario("polarity-1d-v1").model_dump(mode="json")
    scenario["id"] = "mine-v1"
    scenario["catalog"] = {**scenario["catalog"], **catalog}
    return scenario


# ------------------------------------------------------------------------ budgets
def test_a_huge_inline_catalog_is_refused_before_it_is_built(tmp_path, monkeypatch):
    import simulator.catalog

    built = []
    real = simulator.catalog.build_catalog
    monkeypatch.setattr(
        simulator.catalog, "build_catalog", lambda *a, **k: built.append(a) or real(*a, **k)
    )
    spec = {**TINY_SPEC, "scenario": _inline(n_items=10**12), "users": 50, "steps": 5}
    with service(tmp_path) as c:
        body = _problem(c.post("/v1/audits", json=spec, headers=auth(c.key)), 422, "budget")
    assert "1,000,000,000,000 items" in body["detail"]
    assert "limit of 100,000,000 values (RECAUDIT_MAX_CELLS)" in body["detail"]
    assert built == []


def test_a_reference_whose_training_is_huge_is_refused(tmp_path):
    spec = {
        **TINY_SPEC,
        "users": 4,
        "steps": 2,
        "replicates": 2,
        "references": [
            {"kind": "natural"},
            {
                "kind": "ppo-myopic",
                "params": {"iterations": 100000, "users": 1000000, "steps": 10000},
            },
        ],
    }
    with service(tmp_path, max_cells=10**15) as c:
        body = _problem(c.post("/v1/audits", json=spec, headers=auth(c.key)), 422, "budget")
    assert "1,000,000,040,000,000 environment steps" in body["detail"]
    assert "limit of 100,000,000 (RECAUDIT_MAX_TRAIN_STEPS)" in body["detail"]


def test_remote_calls_are_counted_against_the_budget(tmp_path):
    spec = {
        **TINY_SPEC,
        "policy": {"kind": "remote", "params": {"url": "http://127.0.0.1:9/p"}},
        "users": 100,
        "steps": 10,
        "replicates": 2,
    }
    with service(
        tmp_path, remote_allowlist=("127.0.0.1",), remote_batch=10, max_remote_calls=100
    ) as c:
        body = _problem(c.post("/v1/audits", json=spec, headers=auth(c.key)), 422, "budget")
    # 2 replicates x 10 steps x 10 batches of 10 users
    assert "200 calls to remote policies" in body["detail"]
    assert "limit of 100 (RECAUDIT_MAX_REMOTE_CALLS)" in body["detail"]


def test_the_estimate_counts_every_training_once_and_sizes_the_catalog():
    from auditor.budget import estimate
    from auditor.spec import AuditSpec

    ppo = {"kind": "ppo", "params": {"iterations": 2, "users": 8, "steps": 3}}
    spec = AuditSpec.model_validate(
        {
            **TINY_SPEC,
            "scenario": _inline(n_items=500, n_topic_dims=3),
            "references": [{"kind": "natural"}, ppo, {**ppo, "label": "again"}],
        }
    )
    cost = estimate(spec)
    assert (cost.n_items, cost.dim) == (500, 4)
    assert cost.trainings == 1  # the same configuration is trained once
    assert cost.train_steps == 2 * 8 * 3 + 2 * 2000 * 3  # iterations x users x horizon + eval
    assert cost.user_steps == 20 * 3 * 2 * (2 * (4 - 1))  # arms beside the counterfactual
    assert cost.cells == 20 * 500  # a learned policy's scores: users x items


def _model_files(settings_: dict, n_items: int = 30, n_users: int = 20, dim: int = 4):
    """A BPR model.json whose settings say one thing, with small weights of shape dim."""
    from safetensors.torch import save

    weights = save(
        {
            "user_embedding.weight": torch.zeros(n_users + 1, dim),
            "item_embedding.weight": torch.zeros(n_items + 1, dim),
        }
    )
    config = {
        "format": "recaudit-recbole-model",
        "version": 1,
        "model": "BPR",
        "model_type": "general",
        "recbole_version": "1.2.1",
        "dataset": "tiny",
        "settings": settings_,
        "item_tokens": ["[PAD]"] + [str(i) for i in range(n_items)],
        "user_tokens": ["[PAD]"] + [str(i) for i in range(n_users)],
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
    }
    return json.dumps(config).encode(), weights


def _upload(c, config, weights, key=None):
    files = {
        "weights": ("model.safetensors", weights, "application/octet-stream"),
        "config": ("model.json", config, "application/json"),
    }
    return c.post("/v1/policies", files=files, headers=auth(key or c.key))


def test_a_tiny_config_announcing_a_huge_model_is_refused_before_it_is_built(tmp_path, monkeypatch):
    import recbole.utils

    built = []
    monkeypatch.setattr(recbole.utils, "get_model", lambda name: built.append(name))
    config, weights = _model_files({"embedding_size": 1_000_000})
    assert len(config) < 1024
    with service(tmp_path) as c:
        body = _problem(_upload(c, config, weights), 422, "budget")
    assert "52,000,000 parameters" in body["detail"]  # (30 + 1 + 20 + 1) x 1e6
    assert "limit of 20,000,000 (RECAUDIT_MAX_MODEL_PARAMS)" in body["detail"]
    assert built == []


def test_a_config_whose_model_cannot_fit_its_weights_is_refused_before_it_is_built(
    tmp_path, monkeypatch
):
    import recbole.utils

    built = []
    monkeypatch.setattr(recbole.utils, "get_model", lambda name: built.append(name))
    config, weights = _model_files({"embedding_size": 100_000})  # 5.2 M, weights hold 208
    with service(tmp_path) as c:
        body = _problem(_upload(c, config, weights), 422, "invalid-upload")
    assert "at least 5,200,000 parameters" in body["detail"]
    assert "holds 248 float32 values at most" in body["detail"]  # 208 + its header
    assert built == []


# ------------------------------------------------------------- malformed uploads
def test_deeply_nested_json_in_an_upload_is_422_not_500(tmp_path):
    deep = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
    _, weights = _model_files({"embedding_size": 4})
    header = b'{"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    nested_weights = len(header).to_bytes(8, "little") + header
    config, _ = _model_files({"embedding_size": 4})
    meta = json.loads(config)
    meta["weights_sha256"] = hashlib.sha256(nested_weights).hexdigest()
    with service(tmp_path) as c:
        body = _problem(_upload(c, deep, weights), 422, "invalid-upload")
        assert "nested too deeply" in body["detail"]
        body = _problem(_upload(c, json.dumps(meta).encode(), nested_weights), 422)
        assert "nested too deeply" in body["detail"]
        # within the parser's reach but deeper than any model.json
        meta["settings"] = json.loads('{"embedding_size": 4, "x": ' + "[" * 40 + "]" * 40 + "}")
        body = _problem(_upload(c, json.dumps(meta).encode(), weights), 422, "invalid-upload")
        assert "nested too deeply" in body["detail"]
        assert [p.name for p in c.settings.policies_dir.iterdir()] == []


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_weights_that_are_not_finite_are_refused(tmp_path, bad):
    from safetensors.torch import save

    config, _ = _model_files({"embedding_size": 4})
    weights = save(
        {
            "user_embedding.weight": torch.full((21, 4), bad),
            "item_embedding.weight": torch.full((31, 4), bad),
        }
    )
    meta = json.loads(config)
    meta["weights_sha256"] = hashlib.sha256(weights).hexdigest()
    with service(tmp_path) as c:
        body = _problem(_upload(c, json.dumps(meta).encode(), weights), 422, "invalid-upload")
    assert "NaN or infinite" in body["detail"]


# ---------------------------------------------------------------------- leftovers
def test_a_missing_package_data_file_is_refused_at_submission_without_server_paths(tmp_path):
    from simulator.io import DATA_DIR

    spec = {**TINY_SPEC, "scenario": _inline()}
    spec["scenario"]["catalog"] = {"kind": "file", "path": "data:nope/items.parquet"}
    with service(tmp_path) as c:
        body = _problem(c.post("/v1/audits", json=spec, headers=auth(c.key)), 422, "invalid-spec")
    assert "'data:nope/items.parquet' not found" in body["detail"]
    assert str(DATA_DIR) not in json.dumps(body) and os.sep + "simulator" not in body["detail"]


def test_a_failed_audit_shows_no_server_paths(tmp_path):
    from simulator.errors import SpecError
    from simulator.io import DATA_DIR

    s = settings(tmp_path)
    fake = FakeAuditor(s)
    fake.fail_with = SpecError(f"cannot read catalog file {DATA_DIR / 'x' / 'items.npy'}")
    with service(tmp_path, execute=fake) as c:
        aid = c.post("/v1/audits", json=TINY_SPEC, headers=auth(c.key)).json()["id"]
        row = wait_for(
            lambda: (
                (b := c.get(f"/v1/audits/{aid}", headers=auth(c.key)).json())["status"] == "failed"
                and b
            )
        )
    assert row["error"] == "cannot read catalog file data:x/items.npy"


def test_staging_directories_of_killed_uploads_are_removed_on_start(tmp_path):
    root = tmp_path / "policies"
    host = socket.gethostname()
    dead = root / f".upload-{host}.{_dead_pid()}.abc"
    old = root / ".upload-xyz"
    live = root / f".upload-{host}.{os.getpid()}.def"
    for d in (dead, old, live):
        d.mkdir(parents=True)
        (d / "model.safetensors").write_bytes(b"x" * 10)
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    with service(tmp_path):
        pass
    assert sorted(p.name for p in root.iterdir()) == [live.name]


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ------------------------------------------------------------------------ restarts
def test_serve_starts_at_once_on_a_port_left_in_time_wait(tmp_path, monkeypatch):
    import argparse

    import uvicorn

    from service import cli

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    conn, _ = listener.accept()
    conn.close()  # the server side closes first: its port goes to TIME_WAIT
    client.recv(1)
    client.close()
    listener.close()
    ran = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: ran.append(kw["port"]))
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, *a, **k: ran.append(self.config.port))
    monkeypatch.setenv("RECAUDIT_HOME", str(tmp_path))
    monkeypatch.setenv("RAY_ADDRESS", "none")
    args = argparse.Namespace(host="127.0.0.1", port=port, log_level="warning")
    assert cli.cmd_serve(args) == 0
    assert ran == [port]


# ------------------------------------------------------------------ cancellation
def test_a_cancel_stops_a_training_within_one_iteration():
    from auditor.executor import Cancelled, stop_when
    from auditor.train import TrainJob, default_config, run_training
    from simulator.scenarios import get_scenario

    job = TrainJob(
        kind="ppo-myopic",
        scenario=get_scenario("topics-tiny-v1"),
        config=default_config("ppo-myopic", iterations=100_000, users=8, steps=2),
        eval_users=4,
    )
    checks = [0]

    def stop():  # asked once per iteration: true from the 4th on
        checks[0] += 1
        return checks[0] > 3

    with pytest.raises(Cancelled), stop_when(stop):
        run_training(job)
    assert checks[0] == 4  # three iterations ran, the fourth check stopped it


def test_a_cancel_stops_a_simulation_within_one_step():
    from auditor.audit import BuiltinPolicy
    from auditor.executor import Cancelled, run_jobs
    from auditor.measure import ArmJob, run_arm
    from simulator.scenarios import get_scenario

    job = ArmJob(
        scenario=get_scenario("topics-tiny-v1"),
        label="policy",
        factory=BuiltinPolicy("myopic"),
        users=8,
        steps=100_000,
        seed=0,
        replicate=0,
        checkpoints=(0, 100_000),
    )
    checks = [0]

    def stop():  # once before the job, then once per step: true from the 6th on
        checks[0] += 1
        return checks[0] > 5

    with pytest.raises(Cancelled):
        run_jobs(run_arm, [job], ray_address=None, should_stop=stop)
    assert checks[0] == 6  # four steps ran


# ---------------------------------------------------------------------- fairness
def test_another_tenants_audit_starts_before_one_tenants_queue_drains(tmp_path):
    with service(tmp_path, hold=True, concurrency=1) as c:
        a = [
            c.post("/v1/audits", json=TINY_SPEC, headers=auth(c.key)).json()["id"] for _ in range(4)
        ]
        wait_for(lambda: c.fake.started == a[:1])
        b = c.post("/v1/audits", json=TINY_SPEC, headers=auth(c.other)).json()["id"]
        c.fake.gate.set()
        wait_for(lambda: len(c.fake.finished) == 5)
    assert c.fake.started == [a[0], b, *a[1:]]


def test_one_tenant_cannot_hold_every_worker(tmp_path):
    with service(tmp_path, hold=True, concurrency=2) as c:
        a = [
            c.post("/v1/audits", json=TINY_SPEC, headers=auth(c.key)).json()["id"] for _ in range(4)
        ]
        wait_for(lambda: c.fake.started == a[:1])
        b = c.post("/v1/audits", json=TINY_SPEC, headers=auth(c.other)).json()["id"]
        wait_for(lambda: b in c.fake.started)
        queued = c.get("/v1/audits?status=queued", headers=auth(c.key)).json()["total"]
        assert c.fake.started == [a[0], b] and queued == 3


# ------------------------------------------------------------ bodies and headers
async def _call(app, method, path, headers, receive):
    """One request straight into the ASGI app: (status, headers, body)."""
    sent = []

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "app": app,
    }
    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), body


@pytest.mark.parametrize("key", [None, "ra_" + "x" * 43], ids=["no-key", "bad-key"])
def test_an_upload_without_a_valid_key_is_refused_before_its_body_is_read(tmp_path, key):
    import asyncio

    read = []

    async def receive():  # a client that would stall mid-body
        read.append(1)
        raise AssertionError("the body was read before the key was checked")

    headers = {"content-type": "multipart/form-data; boundary=x", "content-length": "7340032"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    with service(tmp_path) as c:
        for path in ("/v1/policies", "/v1/audits"):
            status, hdrs, body = asyncio.run(_call(c.app, "POST", path, headers, receive))
            assert status == 401 and read == []
            assert hdrs[b"content-type"] == PROBLEM.encode()
            slug = "unauthorized" if key is None else "bad-key"
            assert json.loads(body)["type"] == f"urn:recaudit:problem:{slug}"


def test_uploads_beyond_the_limit_are_answered_503_without_reading_them(tmp_path):
    import asyncio

    with service(tmp_path, max_uploads=1) as c:
        headers = {
            "authorization": f"Bearer {c.key}",
            "content-type": "multipart/form-data; boundary=x",
            "content-length": "100",
        }

        async def both():
            gate = asyncio.Event()

            async def stalled():  # the first upload's body does not come (yet)
                await gate.wait()
                return {"type": "http.disconnect"}

            async def unread():
                raise AssertionError("the second upload's body was read")

            held = asyncio.ensure_future(_call(c.app, "POST", "/v1/policies", headers, stalled))
            await asyncio.sleep(0.2)
            second = await _call(c.app, "POST", "/v1/policies", headers, unread)
            gate.set()
            try:
                await held
            except Exception:  # the first client went away: whatever it got
                pass
            return second

        status, hdrs, body = asyncio.run(both())
        assert status == 503 and hdrs[b"retry-after"] == b"5"
        assert "1 upload(s) are being received" in json.loads(body)["detail"]
        # the slot is free again
        config, weights = _model_files({"embedding_size": 4})
        assert _upload(c, config, weights).status_code in (201, 422)


def test_a_request_head_over_the_limit_is_refused_while_it_arrives(tmp_path):
    import threading

    import uvicorn

    from service.cli import server_config

    from .service_helpers import free_port

    s = settings(tmp_path, port=free_port(), max_header_bytes=16 * 1024)
    server = uvicorn.Server(server_config(create_app(s, execute=FakeAuditor(s)), s, "warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, timeout=60)
        with socket.create_connection(("127.0.0.1", s.port), timeout=10) as conn:
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
            sent = 0
            try:
                while sent < 16 << 20:  # a 16 MiB header, unless the server hangs up first
                    conn.sendall(b"a" * 65536)
                    sent += 65536
            except OSError:
                pass
            answer = conn.recv(200)
        assert answer.startswith((b"HTTP/1.1 400", b"HTTP/1.1 431")), answer
        assert sent < 16 << 20  # refused long before the whole header came
        with socket.create_connection(("127.0.0.1", s.port), timeout=10) as conn:
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert conn.recv(200).startswith(b"HTTP/1.1 200")
    finally:
        server.should_exit = True
        thread.join(30)
