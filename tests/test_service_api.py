"""The REST API with a scripted auditor: every endpoint and status code, tenants, keys,
limits, idempotency, cancellation, durable jobs and problem+json errors."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from service.app import create_app
from service.jobs import JobStore, Owner
from service.keys import KeyStore
from service.runner import JobRunner
from service.store import audits, open_engine
from simulator.errors import SpecError

from .service_helpers import TINY_SPEC, FakeAuditor, auth, make_key, settings, wait_for

PROBLEM = "application/problem+json"


@contextmanager
def service(tmp_path, *, hold=False, **overrides):
    s = settings(tmp_path, **overrides)
    fake = FakeAuditor(s, hold=hold)
    with TestClient(create_app(s, execute=fake)) as client:
        client.fake = fake  # type: ignore[attr-defined]
        client.settings = s  # type: ignore[attr-defined]
        client.key = make_key(s, "acme")  # type: ignore[attr-defined]
        client.other = make_key(s, "globex")  # type: ignore[attr-defined]
        yield client
        fake.gate.set()


def submit(client, spec=None, key=None, headers=None):
    h = {**auth(key or client.key), **(headers or {})}
    return client.post("/v1/audits", json=spec or TINY_SPEC, headers=h)


def poll(client, audit_id, key=None, until=("succeeded", "failed", "cancelled")):
    def done():
        body = client.get(f"/v1/audits/{audit_id}", headers=auth(key or client.key)).json()
        return body if body["status"] in until else None

    return wait_for(done)


def _problem(resp, status, slug=None):
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith(PROBLEM)
    body = resp.json()
    assert body["status"] == status and body["title"] and body["detail"]
    if slug:
        assert body["type"] == f"urn:recaudit:problem:{slug}"
    return body


# ----------------------------------------------------------------------- health
def test_health_and_readiness_need_no_key(tmp_path):
    with service(tmp_path) as c:
        assert c.get("/healthz").json() == {"status": "ok", "checks": {}}
        ready = c.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["checks"] == {"job_store": "ok", "workers": "ok", "ray": "ok"}


def test_readiness_is_503_when_the_job_store_cannot_be_written(tmp_path):
    with service(tmp_path) as c:
        svc = c.app.state.services
        good = svc.engine
        svc.engine = sa.create_engine(f"sqlite:///{tmp_path / 'missing' / 'dir' / 'x.db'}")
        try:
            r = c.get("/readyz")
        finally:
            svc.engine = good
        assert r.status_code == 503
        assert r.json()["status"] == "unavailable"
        assert r.json()["checks"]["job_store"].startswith("cannot write the job store")
        assert r.json()["checks"]["ray"] == "ok"
        assert c.get("/readyz").status_code == 200


# ------------------------------------------------------------------------- keys
@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Basic dXNlcjpwdw=="}, {"Authorization": "Bearer"}],
    ids=["none", "basic", "empty"],
)
def test_every_v1_endpoint_needs_a_key(tmp_path, headers):
    with service(tmp_path) as c:
        for method, path in [
            ("GET", "/v1/audits"),
            ("POST", "/v1/audits"),
            ("GET", "/v1/audits/a0123456789abcdef"),
            ("DELETE", "/v1/audits/a0123456789abcdef"),
            ("GET", "/v1/audits/a0123456789abcdef/report"),
            ("GET", "/v1/scenarios"),
            ("GET", "/v1/scenarios/topics-tiny-v1"),
            ("GET", "/v1/policies"),
            ("GET", "/v1/policies/myopic"),
        ]:
            r = c.request(
                method, path, headers=headers, json=TINY_SPEC if method == "POST" else None
            )
            body = _problem(r, 401, "unauthorized")
            assert "Authorization: Bearer KEY" in body["detail"]
            assert r.headers["www-authenticate"].startswith("Bearer")


def test_a_bad_or_revoked_key_is_refused(tmp_path):
    with service(tmp_path) as c:
        _problem(c.get("/v1/audits", headers=auth("ra_" + "x" * 43)), 401, "bad-key")
        _problem(c.get("/v1/audits", headers=auth(c.key[:-1])), 401, "bad-key")
        engine = open_engine(c.settings.db_url)
        store = KeyStore(engine)
        info, key = store.create("initech")
        assert c.get("/v1/audits", headers=auth(key)).status_code == 200
        assert store.revoke(info.id)
        c.app.state.services.keys._cache.clear()  # other processes: within 5 s
        _problem(c.get("/v1/audits", headers=auth(key)), 401, "bad-key")
        engine.dispose()


def test_keys_are_stored_hashed_only(tmp_path):
    with service(tmp_path) as c:
        db = (tmp_path / "service.db").read_bytes()
        wal = tmp_path / "service.db-wal"
        raw = db + (wal.read_bytes() if wal.exists() else b"")
        assert c.key.encode() not in raw
        import hashlib

        assert hashlib.sha256(c.key.encode()).hexdigest().encode() in raw


def test_keys_create_prints_the_key_alone_on_the_last_line(tmp_path):
    env = {**os.environ, "RECAUDIT_HOME": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "service", "keys", "create", "--tenant", "acme"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    key = proc.stdout.rstrip("\n").splitlines()[-1]
    assert key.startswith("ra_") and " " not in key and len(key) == 46
    engine = open_engine(f"sqlite:///{tmp_path / 'service.db'}")
    assert KeyStore(engine).tenant_of(key) == "acme"
    engine.dispose()
    bad = subprocess.run(
        [sys.executable, "-m", "service", "keys", "create", "--tenant", "Not OK"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and "tenant name" in bad.stderr


# ------------------------------------------------------------------- audits
def test_submit_poll_and_fetch_the_report(tmp_path):
    with service(tmp_path) as c:
        r = submit(c)
        assert r.status_code == 202, r.text
        body = r.json()
        aid = body["id"]
        assert r.headers["location"] == f"/v1/audits/{aid}"
        assert body["status"] in ("queued", "running")
        assert body["links"]["report"] == f"/v1/audits/{aid}/report"
        assert body["spec"]["users"] == 20 and body["spec"]["policy"]["kind"] == "myopic"
        done = poll(c, aid)
        assert done["status"] == "succeeded"
        assert done["verdict"] == "pass" and done["exit_code"] == 0
        assert done["progress"] == 1.0 and done["attempts"] == 1
        assert done["mlflow_run_id"] == "r" * 32 and done["mlflow_experiment_id"] == "7"
        assert done["mlflow_url"] is None  # the store is not an HTTP server
        assert done["timings"]["running_s"] >= 0 and done["finished"]
        rep = c.get(f"/v1/audits/{aid}/report", headers=auth(c.key))
        assert rep.status_code == 200 and rep.json()["id"] == aid
        html = c.get(f"/v1/audits/{aid}/report.html", headers=auth(c.key))
        assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
        assert aid in html.text
        figs = c.get(f"/v1/audits/{aid}/figures", headers=auth(c.key)).json()["figures"]
        assert figs == {"shift.png": f"/v1/audits/{aid}/figures/shift.png"}
        png = c.get(figs["shift.png"], headers=auth(c.key))
        assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
        assert png.headers["content-type"] == "image/png"
        _problem(c.get(f"/v1/audits/{aid}/figures/nope.png", headers=auth(c.key)), 404)
        _problem(c.get(f"/v1/audits/{aid}/figures/..%2Fx.png", headers=auth(c.key)), 404)
        assert c.fake.started == [aid]


def test_progress_is_written_to_the_store_while_running(tmp_path):
    with service(tmp_path, hold=True) as c:
        aid = submit(c).json()["id"]
        body = poll(c, aid, until=("running",))
        wait_for(lambda: c.get(f"/v1/audits/{aid}", headers=auth(c.key)).json()["progress"] == 0.1)
        body = c.get(f"/v1/audits/{aid}", headers=auth(c.key)).json()
        assert body["phase"] == "simulating 1/4 arms" and body["started"]
        _problem(c.get(f"/v1/audits/{aid}/report", headers=auth(c.key)), 409, "not-ready")
        c.fake.gate.set()
        assert poll(c, aid)["status"] == "succeeded"


def test_status_reads_see_this_processs_writes_at_once(tmp_path):
    with service(tmp_path, hold=True) as c:
        aid = submit(c).json()["id"]
        url, h = f"/v1/audits/{aid}", auth(c.key)
        poll(c, aid, until=("running",))
        wait_for(lambda: c.get(url, headers=h).json()["progress"] == 0.1)
        c.app.state.services.reads.ttl_s = 60.0  # only a write may spoil an entry here
        before = c.get(url, headers=h).json()
        assert c.get(url, headers=h).content == c.get(url, headers=h).content  # cached
        c.delete(url, headers=h)  # a write: the next read must not be the cached one
        after = c.get(url, headers=h).json()
        assert before["cancel_requested"] is False and after["cancel_requested"] is True
        assert after["phase"] in ("cancelling", "cancelled")  # the runner may be quick
        assert poll(c, aid)["status"] == "cancelled"


@contextmanager
def finished_audit(tmp_path):
    """A service with one succeeded audit and read-cache entries that outlive the test:
    (client, audit url, auth headers, services)."""
    with service(tmp_path) as c:
        aid = submit(c).json()["id"]
        assert poll(c, aid)["status"] == "succeeded"
        svc = c.app.state.services
        svc.reads.ttl_s = 60.0
        yield c, f"/v1/audits/{aid}", auth(c.key), svc


def test_another_processs_change_shows_within_the_cache_lifetime(tmp_path):
    with finished_audit(tmp_path) as (c, url, h, svc):
        aid = url.rsplit("/", 1)[1]
        assert c.get(url, headers=h).json()["verdict"] == "pass"
        with svc.engine.begin() as conn:  # as another service process sharing the store
            conn.execute(sa.update(audits).where(audits.c.id == aid).values(verdict="flag"))
        assert c.get(url, headers=h).json()["verdict"] == "pass"  # served from the cache
        svc.reads.ttl_s = 0.0
        time.sleep(0.01)
        assert c.get(url, headers=h).json()["verdict"] == "flag"


def test_repeated_reads_are_answered_from_the_cache_as_the_route_answers(tmp_path):
    with finished_audit(tmp_path) as (c, url, h, svc):
        first = c.get(url, headers=h)  # the route: reads the store, fills the cache

        def broken(*_a, **_k):
            raise AssertionError("the store was read")

        store_get, svc.jobs.get = svc.jobs.get, broken
        try:
            again = c.get(url, headers=h)  # the cache, in front of the app
            assert again.status_code == 200 and again.content == first.content
            for name in ("content-type", "content-length"):
                assert again.headers[name] == first.headers[name]
            # the cache never stands in for authentication or tenancy
            _problem(c.get(url, headers=auth("ra_" + "x" * 43)), 401, "bad-key")
            _problem(c.get(url, headers={"Authorization": f"Basic {c.key}"}), 401)
            _problem(c.get(url), 401)
        finally:
            svc.jobs.get = store_get
        _problem(c.get(url, headers=auth(c.other)), 404)


def test_read_cache_entries_expire_with_writes_and_time():
    from service.deps import ReadCache

    cache = ReadCache(ttl_s=0.25, size=2)
    now = time.monotonic()
    cache.put(("t", "a1"), 7, now, b"one")
    assert cache.get(("t", "a1"), 7) == b"one"
    assert cache.get(("t", "a1"), 8) is None  # a write since
    assert cache.get(("u", "a1"), 7) is None  # keyed by tenant too
    cache.put(("t", "a2"), 7, now - 1.0, b"old")
    assert cache.get(("t", "a2"), 7) is None  # older than its lifetime
    cache.put(("t", "a3"), 7, now, b"three")  # full: starts over rather than grow
    assert cache.get(("t", "a1"), 7) is None and cache.get(("t", "a3"), 7) == b"three"


def test_another_tenants_audit_is_not_found(tmp_path):
    with service(tmp_path) as c:
        aid = submit(c).json()["id"]
        poll(c, aid)
        for method, path in [
            ("GET", f"/v1/audits/{aid}"),
            ("GET", f"/v1/audits/{aid}/report"),
            ("GET", f"/v1/audits/{aid}/report.html"),
            ("GET", f"/v1/audits/{aid}/figures"),
            ("GET", f"/v1/audits/{aid}/figures/shift.png"),
            ("DELETE", f"/v1/audits/{aid}"),
        ]:
            body = _problem(c.request(method, path, headers=auth(c.other)), 404, "not-found")
            assert aid in body["detail"]
        assert c.get("/v1/audits", headers=auth(c.other)).json()["total"] == 0
        assert c.get("/v1/audits", headers=auth(c.key)).json()["total"] == 1


def test_list_is_paginated_and_filtered_by_status(tmp_path):
    with service(tmp_path) as c:
        ids = [submit(c, {**TINY_SPEC, "seed": i}).json()["id"] for i in range(5)]
        for aid in ids:
            poll(c, aid)
        page = c.get("/v1/audits?limit=2", headers=auth(c.key)).json()
        assert page["total"] == 5 and len(page["items"]) == 2
        assert [i["id"] for i in page["items"]] == ids[::-1][:2]  # newest first
        assert page["next"] == "/v1/audits?limit=2&offset=2"
        last = c.get("/v1/audits?limit=2&offset=4", headers=auth(c.key)).json()
        assert [i["id"] for i in last["items"]] == [ids[0]] and last["next"] is None
        assert c.get("/v1/audits?status=succeeded", headers=auth(c.key)).json()["total"] == 5
        assert c.get("/v1/audits?status=queued", headers=auth(c.key)).json()["total"] == 0
        _problem(c.get("/v1/audits?status=done", headers=auth(c.key)), 422)
        _problem(c.get("/v1/audits?limit=0", headers=auth(c.key)), 422)
        _problem(c.get("/v1/audits?limit=101", headers=auth(c.key)), 422)


def test_idempotency_key_gives_back_the_same_audit(tmp_path):
    with service(tmp_path) as c:
        h = {"Idempotency-Key": "release-42"}
        first = submit(c, headers=h)
        again = submit(c, headers=h)
        assert first.status_code == again.status_code == 202
        assert first.json()["id"] == again.json()["id"]
        other = submit(c, key=c.other, headers=h)  # keys are per tenant
        assert other.json()["id"] != first.json()["id"]
        body = _problem(
            submit(c, {**TINY_SPEC, "seed": 9}, headers=h),
            422,
            "idempotency-key-reused",
        )
        assert first.json()["id"] in body["detail"]
        engine = open_engine(c.settings.db_url)
        with engine.connect() as conn:
            n = conn.execute(sa.select(sa.func.count()).select_from(audits)).scalar_one()
        engine.dispose()
        assert n == 2
        wait_for(lambda: len(c.fake.finished) == 2)
        assert sorted(c.fake.started) == sorted([first.json()["id"], other.json()["id"]])


def test_cancel_a_queued_and_a_running_audit(tmp_path):
    with service(tmp_path, hold=True) as c:
        running = submit(c).json()["id"]
        poll(c, running, until=("running",))
        queued = submit(c, {**TINY_SPEC, "seed": 1}).json()["id"]  # concurrency 1: waits
        r = c.delete(f"/v1/audits/{queued}", headers=auth(c.key))
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        r = c.delete(f"/v1/audits/{running}", headers=auth(c.key))
        assert r.status_code == 202 and r.json()["cancel_requested"] is True
        assert poll(c, running)["status"] == "cancelled"
        _problem(c.delete(f"/v1/audits/{running}", headers=auth(c.key)), 409, "conflict")
        _problem(c.get(f"/v1/audits/{running}/report", headers=auth(c.key)), 409, "not-ready")
        c.fake.gate.set()
        time.sleep(1.2)  # two dispatcher ticks: the cancelled queued job must not start
        assert c.fake.started == [running] and c.fake.finished == []


def test_a_failing_audit_records_its_reason(tmp_path):
    with service(tmp_path) as c:
        c.fake.fail_with = SpecError("cannot connect to Ray at 10.0.0.1:6379: refused")
        aid = submit(c).json()["id"]
        body = poll(c, aid)
        assert body["status"] == "failed" and body["verdict"] is None
        assert body["error"] == "cannot connect to Ray at 10.0.0.1:6379: refused"
        c.fake.fail_with = RuntimeError("boom")
        body = poll(c, submit(c, {**TINY_SPEC, "seed": 3}).json()["id"])
        assert body["error"] == "internal error: RuntimeError: boom"


def test_unknown_audit_ids_are_404(tmp_path):
    with service(tmp_path) as c:
        for aid in ["a0123456789abcdef", "nope", "../../etc"]:
            _problem(c.get(f"/v1/audits/{aid}", headers=auth(c.key)), 404)


# ------------------------------------------------------------------ bad requests
@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"users": 1}, "body.users"),
        ({"colour": "red"}, "body.colour"),
        ({"replicates": "many"}, "body.replicates"),
        ({"policy": {"params": {}}}, "body.policy.kind"),
        ({"alpha": 0.9}, "body.alpha"),
    ],
)
def test_invalid_specs_are_422_naming_the_field(tmp_path, change, where):
    with service(tmp_path) as c:
        body = _problem(submit(c, {**TINY_SPEC, **change}), 422, "invalid-request")
        assert body["errors"][0]["loc"] == where
        assert body["detail"].startswith(f"invalid {where}: ")
        assert c.get("/v1/audits", headers=auth(c.key)).json()["total"] == 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"scenario": "topics-tiny-v9"}, "unknown scenario 'topics-tiny-v9' (did you mean"),
        ({"policy": {"kind": "myopia"}}, "unknown policy 'myopia'"),
        ({"policy": {"kind": "natural"}}, "cannot be 'natural'"),
        ({"policy": {"kind": "myopic", "params": {"x": 1}}}, "takes no parameters"),
        ({"policy": {"kind": "uploaded", "params": {"id": "p0000000000000000"}}}, "no uploaded"),
        ({"policy": {"kind": "remote", "params": {}}}, "needs parameter 'url'"),
        ({"policy": {"kind": "remote", "params": {"url": "ftp://127.0.0.1/x"}}}, "http or https"),
        (
            {"policy": {"kind": "remote", "params": {"url": "http://u:p@127.0.0.1/"}}},
            "user name or password",
        ),
    ],
)
def test_specs_the_auditor_cannot_run_are_422(tmp_path, change, message):
    with service(tmp_path, remote_allowlist=("127.0.0.1",)) as c:
        body = _problem(submit(c, {**TINY_SPEC, **change}), 422, "invalid-spec")
        assert message in body["detail"]


def test_scenario_files_outside_package_data_are_refused(tmp_path):
    from simulator.scenarios import get_scenario

    scenario = get_scenario("topics-tiny-v1").model_dump(mode="json")
    scenario["id"] = "mine-v1"
    scenario["catalog"] = {"kind": "file", "path": "/etc/passwd.npy"}
    with service(tmp_path) as c:
        body = _problem(submit(c, {**TINY_SPEC, "scenario": scenario}), 422, "invalid-spec")
        assert (
            "reads no files from its disk" in body["detail"] and "/etc/passwd.npy" in body["detail"]
        )


def test_an_over_budget_spec_is_422_and_says_the_limit(tmp_path):
    # 3 arms run as 4 simulations: the policy and popularity each beside the natural one
    # (the natural arm is measured from the policy's run)
    with service(tmp_path, max_user_steps=400) as c:
        ok = submit(c, {**TINY_SPEC, "users": 10, "steps": 3, "replicates": 2})  # 10*3*2*4 = 240
        assert ok.status_code == 202
        body = _problem(submit(c), 422, "budget")  # 20 * 3 * 2 * 4 = 480
        assert "480 user-steps" in body["detail"] and "limit of 400" in body["detail"]
        assert "3 arms" in body["detail"]


def test_an_oversized_body_is_413(tmp_path):
    with service(tmp_path, max_body_bytes=2048) as c:
        big = {
            **TINY_SPEC,
            "criteria": [
                {
                    "name": "x",
                    "metric": "shift",
                    "reference": "natural",
                    "margin": 0.1,
                    "description": "y" * 3000,
                }
            ],
        }
        body = _problem(submit(c, big), 413, "too-large")
        assert "2048 bytes" in body["detail"]

        def chunks():  # no Content-Length: counted as it streams
            data = json.dumps(big).encode()
            for i in range(0, len(data), 500):
                yield data[i : i + 500]

        r = c.post(
            "/v1/audits",
            content=chunks(),
            headers={**auth(c.key), "Content-Type": "application/json"},
        )
        _problem(r, 413, "too-large")
        assert c.get("/v1/audits", headers=auth(c.key)).json()["total"] == 0


def test_unknown_routes_and_methods_are_problems(tmp_path):
    with service(tmp_path) as c:
        _problem(c.get("/v2/audits", headers=auth(c.key)), 404)
        _problem(c.put("/v1/audits", headers=auth(c.key), json={}), 405)
        body = _problem(
            c.post(
                "/v1/audits",
                content=b"{not json",
                headers={**auth(c.key), "Content-Type": "application/json"},
            ),
            422,
        )
        assert "json" in body["detail"].lower()


def test_a_disallowed_remote_host_is_refused_before_any_connection(tmp_path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    try:
        with service(tmp_path, remote_allowlist=("localhost:1",)) as c:
            spec = {
                **TINY_SPEC,
                "policy": {"kind": "remote", "params": {"url": f"http://127.0.0.1:{port}/act"}},
            }
            body = _problem(submit(c, spec), 422, "invalid-spec")
            assert f"127.0.0.1:{port} is not on the operator's allowlist" in body["detail"]
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody connected
    finally:
        listener.close()


# --------------------------------------------------------------- catalog routes
def test_scenarios(tmp_path):
    from simulator.scenarios import SCENARIOS

    with service(tmp_path) as c:
        rows = c.get("/v1/scenarios", headers=auth(c.key)).json()
        assert [r["id"] for r in rows] == list(SCENARIOS)
        one = c.get("/v1/scenarios/topics-tiny-v1", headers=auth(c.key)).json()
        assert one["fingerprint"] == SCENARIOS["topics-tiny-v1"].fingerprint()
        assert one["spec"]["slate_size"] == 3
        body = _problem(c.get("/v1/scenarios/topics-tiny", headers=auth(c.key)), 404)
        assert "did you mean 'topics-tiny-v1'" in body["detail"]


def test_policies(tmp_path):
    from recommenders.registry import POLICIES

    with service(tmp_path, remote_allowlist=("127.0.0.1:9",)) as c:
        listing = c.get("/v1/policies", headers=auth(c.key)).json()
        names = [k["name"] for k in listing["kinds"]]
        assert names == [*POLICIES, "uploaded", "remote"]
        assert listing["uploaded"] == [] and listing["remote_allowlist"] == ["127.0.0.1:9"]
        one = c.get("/v1/policies/oracle-greedy", headers=auth(c.key)).json()
        assert one["oracle"] is True and one["source"] == "builtin"
        _problem(c.get("/v1/policies/p0123456789abcdef", headers=auth(c.key)), 404)
        _problem(c.get("/v1/policies/nope", headers=auth(c.key)), 404)


def test_openapi_describes_every_field_of_the_services_schemas(tmp_path):
    with service(tmp_path) as c:
        doc = c.get("/openapi.json").json()
        assert c.get("/docs").status_code == 200
    schemas = doc["components"]["schemas"]
    own = [
        "Audit",
        "AuditSummary",
        "AuditLinks",
        "AuditPage",
        "AuditTimings",
        "Figures",
        "ScenarioSummary",
        "ScenarioDetail",
        "PolicyKindInfo",
        "UploadedPolicy",
        "PolicyListing",
        "Health",
        "Problem",
        "FieldError",
        "AuditSpec",
        "PolicySpec",
        "Criterion",
    ]
    missing = [
        f"{name}.{field}"
        for name in own
        for field, prop in schemas[name]["properties"].items()
        if not prop.get("description")
    ]
    assert missing == []
    post = doc["paths"]["/v1/audits"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "AuditSpec"
    )
    assert {"202", "401", "413", "422"} <= set(post["responses"])
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


# ---------------------------------------------------------- durability (store level)
def _insert_running(engine, owner, heartbeat, attempts=1, cancel=False):
    with engine.begin() as conn:
        conn.execute(
            sa.insert(audits).values(
                id="a" + "1" * 16,
                tenant="acme",
                status="running",
                spec=json.dumps(TINY_SPEC),
                policy_kind="myopic",
                scenario="topics-tiny-v1",
                request_hash="h",
                progress=0.4,
                phase="simulated 2/6 arms",
                created_at=time.time() - 5,
                started_at=time.time() - 4,
                attempts=attempts,
                owner=owner,
                heartbeat=heartbeat,
                cancel_requested=cancel,
            )
        )


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_job_left_running_by_a_dead_process_is_run_again(tmp_path):
    s = settings(tmp_path)
    engine = open_engine(s.db_url)
    me = Owner.me()
    _insert_running(engine, f"{me.host}:{_dead_pid()}:dead", heartbeat=time.time())
    fake = FakeAuditor(s)
    runner = JobRunner(JobStore(engine), fake, poll_s=0.05)
    runner.start()
    try:
        assert runner.recovered == ["a" + "1" * 16]
        store = JobStore(engine)
        # the auditor returns before the runner records the outcome: wait for the record
        wait_for(lambda: store.get("acme", "a" + "1" * 16)["status"] == "succeeded")
        row = store.get("acme", "a" + "1" * 16)
        assert row["attempts"] == 2 and fake.finished == ["a" + "1" * 16]
    finally:
        runner.stop()
        engine.dispose()


def test_a_live_processs_job_is_left_alone_until_its_heartbeat_is_stale(tmp_path):
    s = settings(tmp_path)
    engine = open_engine(s.db_url)
    me = Owner.me()
    live = f"{me.host}:{os.getppid()}:other"  # pytest's parent: alive
    _insert_running(engine, live, heartbeat=time.time())
    store = JobStore(engine)
    assert store.recover(me, stale_after_s=60) == []
    assert store.recover(Owner("elsewhere", 1, "x"), stale_after_s=60) == []
    with engine.begin() as conn:
        conn.execute(sa.update(audits).values(heartbeat=time.time() - 120))
    assert store.recover(Owner("elsewhere", 1, "x"), stale_after_s=60) == ["a" + "1" * 16]
    assert store.get("acme", "a" + "1" * 16)["status"] == "queued"
    engine.dispose()


def test_an_earlier_incarnation_with_the_same_pid_is_dead(tmp_path):
    s = settings(tmp_path)
    engine = open_engine(s.db_url)
    me = Owner.me()
    _insert_running(engine, f"{me.host}:{me.pid}:before", heartbeat=time.time())
    assert JobStore(engine).recover(me, 60) == ["a" + "1" * 16]
    engine.dispose()


def test_jobs_interrupted_too_often_fail_and_cancelled_ones_stay_cancelled(tmp_path):
    s = settings(tmp_path)
    engine = open_engine(s.db_url)
    _insert_running(engine, None, heartbeat=None, attempts=3)
    fake = FakeAuditor(s)
    runner = JobRunner(JobStore(engine), fake, max_attempts=3, poll_s=0.05)
    runner.start()
    try:
        row = wait_for(
            lambda: (r := JobStore(engine).get("acme", "a" + "1" * 16))["status"] == "failed" and r
        )
        assert "interrupted 3 time(s)" in row["error"] and fake.started == []
    finally:
        runner.stop()
    with engine.begin() as conn:
        conn.execute(sa.delete(audits))
    _insert_running(engine, None, heartbeat=None, cancel=True)
    assert JobStore(engine).recover(Owner.me(), 60) == ["a" + "1" * 16]
    assert JobStore(engine).get("acme", "a" + "1" * 16)["status"] == "cancelled"
    engine.dispose()


def test_a_graceful_stop_puts_the_running_audit_back_in_the_queue(tmp_path):
    s = settings(tmp_path)
    held = FakeAuditor(s, hold=True)  # its gate stays shut through the shutdown
    with TestClient(create_app(s, execute=held)) as c:
        key = make_key(s, "acme")
        aid = c.post("/v1/audits", json=TINY_SPEC, headers=auth(key)).json()["id"]
        poll(c, aid, key=key, until=("running",))
    assert held.finished == []
    engine = open_engine(f"sqlite:///{tmp_path / 'service.db'}")
    row = JobStore(engine).get("acme", aid)
    engine.dispose()
    assert row["status"] == "queued" and row["phase"] == "re-queued: the service stopped"
    fake = FakeAuditor(s)
    with TestClient(create_app(s, execute=fake)) as c2:
        done = poll(c2, aid, key=key)
    assert done["status"] == "succeeded" and done["attempts"] == 2 and fake.finished == [aid]
