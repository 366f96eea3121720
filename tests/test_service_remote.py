"""The remote black-box policy: allowlist before any connection, no redirects, timeouts,
bounded retries, size caps, schema checks; and a remote policy audited end to end."""

from __future__ import annotations

import socket
from contextlib import contextmanager

import pytest
import torch
from fastapi.testclient import TestClient

from recommenders.remote import (
    RemoteClient,
    RemotePolicy,
    RemotePolicyFactory,
    RemoteSettings,
    check_allowed,
)
from service.app import create_app, real_execute
from service.store import open_engine
from service.uploads import PolicyStore
from simulator.catalog import build_catalog
from simulator.errors import SpecError
from simulator.policy import PolicyContext
from simulator.scenarios import get_scenario
from simulator.types import Feedback, Observation

from .service_helpers import TINY_SPEC, auth, make_key, settings, wait_for
from .service_policy_server import PolicyServer


@pytest.fixture
def server():
    with PolicyServer() as s:
        yield s


def remote(server, **kw):
    kw.setdefault("allowlist", (f"127.0.0.1:{server.port}",))
    kw.setdefault("backoff_s", 0.01)
    return RemoteSettings(**kw)


def ctx(users=7, k=3):
    scenario = get_scenario("topics-tiny-v1")
    return PolicyContext(
        num_users=users,
        slate_size=k,
        catalog=build_catalog(scenario.catalog, scenario.env_seed),
        generator=torch.Generator().manual_seed(0),
        device=torch.device("cpu"),
        horizon=4,
    )


@pytest.mark.parametrize(
    ("url", "allow", "ok"),
    [
        ("http://127.0.0.1:8080/act", ("127.0.0.1",), True),
        ("http://127.0.0.1:8080/act", ("127.0.0.1:8080",), True),
        ("http://127.0.0.1:8081/act", ("127.0.0.1:8080",), False),
        ("http://LOCALHOST/act", ("localhost:80",), True),
        ("https://localhost/act", ("localhost:80",), False),
        ("http://[::1]:9000/", ("[::1]:9000",), True),
        ("http://127.0.0.2/", ("127.0.0.1",), False),
        ("http://127.0.0.1.evil.example/", ("127.0.0.1",), False),
        ("http://127.0.0.1/", (), False),
    ],
)
def test_allowlist_matches_host_or_host_and_port(url, allow, ok):
    if ok:
        check_allowed(url, allow)
    else:
        with pytest.raises(SpecError, match="allow"):
            check_allowed(url, allow)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("file:///etc/passwd", "http or https"),
        ("gopher://127.0.0.1/", "http or https"),
        ("http://user:pw@127.0.0.1/", "user name or password"),
        ("http:///nohost", "no host"),
    ],
)
def test_bad_urls_are_refused(url, message):
    with pytest.raises(SpecError, match=message):
        check_allowed(url, ("127.0.0.1",))


def test_a_disallowed_host_gets_no_connection():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    try:
        with pytest.raises(SpecError, match="not on the operator's allowlist"):
            RemotePolicyFactory(f"http://127.0.0.1:{port}/", RemoteSettings(allowlist=("x",)))()
        with pytest.raises(BlockingIOError):
            listener.accept()
    finally:
        listener.close()


def test_the_policy_sends_batched_observations_and_takes_the_slates(server):
    policy = RemotePolicy(server.url(), remote(server, batch=3))
    policy.reset(ctx())
    slate = policy.act(Observation(t=0, num_users=7))
    assert slate.shape == (7, 3) and slate.dtype == torch.long
    assert slate[5].tolist() == [5, 6, 7]  # user 5 at t 0: (5 + i) % 30
    first = server.requests[:3]
    assert [(r["user_offset"], len(r["last_items"])) for r in first] == [(0, 3), (3, 3), (6, 1)]
    assert all(r["t"] == 0 and r["num_items"] == 30 and r["slate_size"] == 3 for r in first)
    assert len(first[0]["item_features"]) == 30 and len(first[0]["item_topics"]) == 30
    assert first[0]["protocol"] == "recaudit.remote-policy/v1" and first[0]["horizon"] == 4
    item = torch.tensor([2, -1, 4, -1, -1, 9, 0])
    policy.update(Feedback(t=0, slate=slate, slot=torch.zeros(7, dtype=torch.long), item=item))
    policy.act(Observation(t=1, num_users=7))
    later = server.requests[3:]
    assert [r["last_items"] for r in later] == [[2, -1, 4], [-1, -1, 9], [0]]
    assert all("item_features" not in r or r["item_features"] is None for r in later)
    assert len({r["session"] for r in server.requests}) == 1


def test_redirects_are_not_followed(server):
    client = RemoteClient(server.url("/redirect"), remote(server))
    with pytest.raises(SpecError, match="redirect"):
        client.post({"x": 1})
    assert server.hits["/redirect"] == 1 and server.hits["/act"] == 0


@pytest.mark.parametrize("path", ["/big", "/big-chunked"])
def test_responses_over_the_size_cap_are_abandoned(server, path):
    client = RemoteClient(server.url(path), remote(server, max_bytes=100_000))
    with pytest.raises(SpecError, match="more than 100000 bytes"):
        client.post({"x": 1})
    assert server.hits[path] == 1  # not retried


def test_retries_are_bounded(server):
    client = RemoteClient(server.url("/flaky"), remote(server, retries=2))
    assert client.post({"x": 1}) == {"slates": []}
    assert server.hits["/flaky"] == 3  # two 503s, then the answer
    down = RemoteClient(server.url("/down"), remote(server, retries=3))
    with pytest.raises(SpecError, match="failed after 4 attempt"):
        down.post({"x": 1})
    assert server.hits["/down"] == 4


def test_calls_time_out(server):
    client = RemoteClient(server.url("/slow"), remote(server, timeout_s=0.2, retries=1))
    with pytest.raises(SpecError, match="ReadTimeout"):
        client.post({"x": 1})
    assert server.hits["/slow"] == 2


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/short", r"shape \(7, 2\), expected \(7, 3\)"),
        ("/range", "outside 0..29"),
        ("/floats", "invalid body at slates.0.0"),
        ("/html", "answered text/html"),
        ("/missing", "HTTP 404"),
    ],
)
def test_answers_are_schema_checked(server, path, message):
    policy = RemotePolicy(server.url(path), remote(server))
    policy.reset(ctx())
    with pytest.raises(SpecError, match=message):
        policy.act(Observation(t=0, num_users=7))


@contextmanager
def real_service(tmp_path, **overrides):
    s = settings(tmp_path, **overrides)
    engine = open_engine(s.db_url)
    with TestClient(
        create_app(s, execute=real_execute(s, PolicyStore(engine, s.policies_dir)))
    ) as c:
        c.key = make_key(s, "acme")  # type: ignore[attr-defined]
        yield c
    engine.dispose()


def _finish(c, aid):
    def done():
        b = c.get(f"/v1/audits/{aid}", headers=auth(c.key)).json()
        return b if b["status"] in ("succeeded", "failed", "cancelled") else None

    return wait_for(done, timeout=120)


def test_a_remote_policy_is_audited_end_to_end(tmp_path, server):
    with real_service(
        tmp_path, remote_allowlist=(f"127.0.0.1:{server.port}",), remote_batch=8
    ) as c:
        spec = {**TINY_SPEC, "policy": {"kind": "remote", "params": {"url": server.url()}}}
        r = c.post("/v1/audits", json=spec, headers=auth(c.key))
        assert r.status_code == 202, r.text
        body = _finish(c, r.json()["id"])
        assert body["status"] == "succeeded", body["error"]
        report = c.get(f"/v1/audits/{body['id']}/report", headers=auth(c.key)).json()
    assert report["arms"][0] == {**report["arms"][0], "label": "policy", "kind": "remote"}
    # 2 replicates x 3 steps x ceil(20 users / 8) calls, one session per replicate
    assert len(server.requests) == 2 * 3 * 3
    assert len({r["session"] for r in server.requests}) == 2
    assert sorted({r["t"] for r in server.requests}) == [0, 1, 2]
    assert report["metrics"]["policy"]["coverage"]["mean"] > 0


def test_a_remote_policy_that_misbehaves_fails_the_audit_with_the_reason(tmp_path, server):
    with real_service(tmp_path, remote_allowlist=(f"127.0.0.1:{server.port}",)) as c:
        spec = {**TINY_SPEC, "policy": {"kind": "remote", "params": {"url": server.url("/range")}}}
        body = _finish(c, c.post("/v1/audits", json=spec, headers=auth(c.key)).json()["id"])
    assert body["status"] == "failed"
    assert "answered item indices outside 0..29" in body["error"]
