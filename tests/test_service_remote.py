"""The remote black-box policy: allowlist before any connection, no redirects, a total
deadline per call and per audit, cancellation of a call in flight, bounded retries, size
caps, schema checks; protocol v2 by ids and v1 by indices; remote policies audited end to
end."""

from __future__ import annotations

import hashlib
import hmac
import re
import socket
import threading

import pytest
import torch

from recommenders.remote import (
    CallCancelled,
    RemoteClient,
    RemotePolicy,
    RemotePolicyFactory,
    RemoteSettings,
    check_allowed,
    check_params,
    stop_calls_when,
)
from simulator.catalog import build_catalog
from simulator.errors import SpecError
from simulator.policy import PolicyContext
from simulator.scenarios import get_scenario
from simulator.types import Feedback, Observation

from .service_helpers import (
    TINY_SPEC,
    auth,
    finish_audit,
    real_service,
    wait_for,
)
from .service_policy_server import PolicyServer


@pytest.fixture
def server():
    with PolicyServer() as s:
        yield s


def remote(server, **kw):
    kw.setdefault("allowlist", (f"127.0.0.1:{server.port}",))
    kw.setdefault("backoff_s", 0.01)
    kw.setdefault("timeout_s", 60.0)  # the tests of deadlines set their own
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


def test_v1_sends_batched_observations_and_takes_the_slates(server):
    policy = RemotePolicy(server.url(), remote(server, batch=3), protocol="v1")
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
    with pytest.raises(
        SpecError, match=r"failed after 2 attempt\(s\): no complete answer within 0.2 s"
    ):
        client.post({"x": 1})
    assert server.hits["/slow"] == 2


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/short", r"answered 7 slate\(s\) for 7 user\(s\) of 3 items each \(first wrong: slate 0"),
        ("/range", "answered 21 item indices outside 0..29 \\(first: 30\\)"),
        ("/floats", "invalid body at slates.0.0"),
        ("/float-index", "invalid body at slates.0.0"),
        ("/huge-index", "answered 7 item indices outside 0..29 \\(first: 10000000000"),
        ("/repeat", "answered a slate that repeats item 0 \\(user 0 of the run\\)"),
        ("/nested", "answered JSON nested too deeply"),
        ("/html", "answered text/html"),
        ("/missing", "HTTP 404"),
    ],
)
def test_v1_answers_are_schema_checked(server, path, message):
    policy = RemotePolicy(server.url(path), remote(server), protocol="v1")
    policy.reset(ctx())
    with pytest.raises(SpecError, match=message):
        policy.act(Observation(t=0, num_users=7))


def test_v2_sends_salted_user_ids_and_histories_of_item_ids(server):
    """The request speaks the scenario's ids: per-run simulated user ids, clicks as item
    ids (bounded), the catalog's ids at t == 0; the answer's ids become indices."""
    c = ctx(users=7)
    ids = c.catalog.item_ids
    policy = RemotePolicy(server.url(), remote(server, batch=4), history=2, salt="s3cret")
    policy.reset(c)
    slate = policy.act(Observation(t=0, num_users=7))
    first = server.requests[:2]
    assert [len(r["users"]) for r in first] == [4, 3]
    assert first[0]["protocol"] == "recaudit.remote-policy/v2"
    assert first[0]["catalog"] == {"item_ids": list(ids)}  # no features unless asked
    assert "catalog" not in first[1] or first[1]["catalog"] is None or first[1]["t"] == 0
    sims = [u["id"] for r in first for u in r["users"]]
    want = [
        "sim-"
        + hmac.new(
            b"s3cret", f"{policy.session}\x00{b}\x00{b}".encode(), hashlib.sha256
        ).hexdigest()[:16]
        for b in range(7)
    ]
    assert sims == want and len(set(sims)) == 7
    assert all(u["history"] == [] for r in first for u in r["users"])
    # the slates are the server's ids, as indices of the catalog
    answered = server.id_slates({**first[0], "users": first[0]["users"][:1]})[0]
    assert [ids[i] for i in slate[0].tolist()] == answered
    for t, clicks in enumerate(([2, -1, 4, 5, -1, 9, 0], [3, -1, 1, 6, -1, -1, 7], [8] * 7)):
        item = torch.tensor(clicks)
        policy.update(Feedback(t=t, slate=slate, slot=torch.zeros(7, dtype=torch.long), item=item))
        slate = policy.act(Observation(t=t + 1, num_users=7))
    last = [u for r in server.requests[-2:] for u in r["users"]]
    assert last[0]["history"] == [ids[3], ids[8]]  # the last 2 clicks, oldest first
    assert last[1]["history"] == [ids[8]]
    assert [u["id"] for u in last] == want  # stable within the run
    assert all("catalog" not in r for r in server.requests[2:])
    # another run (session) of the same audit gets other ids
    policy.reset(c)
    policy.act(Observation(t=0, num_users=7))
    assert not {u["id"] for u in server.requests[-1]["users"]} & set(want)


def test_v2_speaks_the_scenarios_own_item_ids():
    """A recommender that knows only movie ids is audited on movielens-100k-v1: item
    index i is movie id i + 1, both ways."""
    scenario = get_scenario("movielens-100k-v1")
    catalog = build_catalog(scenario.catalog, scenario.env_seed)
    movie_ids = [str(m) for m in range(1682, 0, -1)]  # the server's order: newest first
    with PolicyServer(item_ids=movie_ids) as s:
        c = PolicyContext(
            num_users=3,
            slate_size=5,
            catalog=catalog,
            generator=torch.Generator(),
            device=torch.device("cpu"),
            user_ids=("196", "186", "22"),
        )
        policy = RemotePolicy(s.url(), remote(s))
        policy.reset(c)
        slate = policy.act(Observation(t=0, num_users=3))
        sent = s.requests[0]["users"]
        for j in range(3):
            answered = s.id_slates({**s.requests[0], "users": [sent[j]]})[0]
            assert [str(i + 1) for i in slate[j].tolist()] == answered
        assert all(re.fullmatch(r"sim-[0-9a-f]{16}", u["id"]) for u in sent)


@pytest.mark.parametrize(
    ("path", "message"),
    [
        (
            "/unknown-ids",
            "answered 8 item id\\(s\\) that are not in the scenario's catalog "
            "\\(first: 'nope-1', 'nope-2'\\)",
        ),
        ("/repeat", "answered a slate that repeats item '.+' \\(user 0 of the run\\)"),
        (
            "/short",
            r"answered 7 slate\(s\) for 7 user\(s\) of 3 items each \(first wrong: slate 0, 2 items\)",
        ),
        ("/nested", "answered JSON nested too deeply"),
    ],
)
def test_v2_answers_are_checked(server, path, message):
    policy = RemotePolicy(server.url(path), remote(server))
    policy.reset(ctx())
    with pytest.raises(SpecError, match=message):
        policy.act(Observation(t=0, num_users=7))


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "needs parameter 'url'"),
        ({"url": "http://127.0.0.1:1/", "protocol": "v3"}, "must be 'v1' or 'v2'"),
        ({"url": "http://127.0.0.1:1/", "history": 1000}, "history must be in 0..200"),
        ({"url": "http://127.0.0.1:1/", "features": "yes"}, "features must be true or false"),
        ({"url": "http://127.0.0.1:1/", "protocol": "v1", "history": 3}, "protocol v2 only"),
        ({"url": "http://127.0.0.1:1/", "token": "x"}, "takes no parameter\\(s\\) token"),
    ],
)
def test_remote_params_are_checked(params, message):
    with pytest.raises(SpecError, match=message):
        check_params(params, ("127.0.0.1",))


def test_a_trickled_answer_cannot_outlast_the_call_deadline(server):
    """The answer is valid but sent one byte every 0.1 s (about 10 s in all): the call
    ends at its total deadline (0.5 s), however often bytes arrive, and the connection
    is closed (the server never finishes sending)."""
    client = RemoteClient(server.url("/trickle"), remote(server, timeout_s=0.5, retries=0))
    with pytest.raises(SpecError, match=r"no complete answer within 0.5 s \(the call deadline\)"):
        client.post({"protocol": "recaudit.remote-policy/v1", "slate_size": 1, "last_items": []})
    assert server.trickle_done.wait(30)
    sent, finished = server.trickles[0]
    assert not finished and sent < 100


def test_the_audits_remote_time_bounds_every_call(server):
    """``not_after`` (the audit's deadline) caps a call even when its own timeout is
    longer, and a call after it is refused without a connection."""
    import time

    client = RemoteClient(
        server.url("/trickle"),
        remote(server, timeout_s=60, retries=3, audit_s=0.5),
        not_after=time.time() + 0.5,
    )
    with pytest.raises(SpecError, match="the audit's remote time is spent"):
        client.post({"protocol": "recaudit.remote-policy/v1", "slate_size": 1, "last_items": []})
    assert server.trickle_done.wait(30)
    assert server.trickles == [(server.trickles[0][0], False)]  # one attempt, abandoned
    with pytest.raises(SpecError, match="the audit's remote time is spent"):
        client.post({"x": 1})
    assert server.hits["/act"] == 0


def test_cancellation_interrupts_a_call_in_flight(server):
    client = RemoteClient(server.url("/trickle"), remote(server, timeout_s=60, retries=2))
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    with stop_calls_when(cancel.is_set), pytest.raises(CallCancelled, match="cancelled"):
        client.post({"protocol": "recaudit.remote-policy/v1", "slate_size": 1, "last_items": []})
    assert server.trickle_done.wait(30)
    assert server.hits["/trickle"] == 1 and not server.trickles[0][1]


def test_a_v1_remote_policy_is_audited_end_to_end(tmp_path, server):
    with real_service(
        tmp_path, remote_allowlist=(f"127.0.0.1:{server.port}",), remote_batch=8
    ) as c:
        params = {"url": server.url(), "protocol": "v1"}
        spec = {**TINY_SPEC, "policy": {"kind": "remote", "params": params}}
        r = c.post("/v1/audits", json=spec, headers=auth(c.key))
        assert r.status_code == 202, r.text
        body = finish_audit(c, r.json()["id"])
        assert body["status"] == "succeeded", body["error"]
        report = c.get(f"/v1/audits/{body['id']}/report", headers=auth(c.key)).json()
    assert report["arms"][0] == {**report["arms"][0], "label": "policy", "kind": "remote"}
    # 2 replicates x 3 steps x ceil(20 users / 8) calls, one session per replicate
    assert len(server.requests) == 2 * 3 * 3
    assert len({r["session"] for r in server.requests}) == 2
    assert sorted({r["t"] for r in server.requests}) == [0, 1, 2]
    assert report["metrics"]["policy"]["coverage"]["mean"] > 0


def test_a_v2_remote_policy_is_audited_end_to_end_by_ids(tmp_path, server):
    with real_service(
        tmp_path, remote_allowlist=(f"127.0.0.1:{server.port}",), remote_batch=8
    ) as c:
        spec = {**TINY_SPEC, "policy": {"kind": "remote", "params": {"url": server.url()}}}
        body = finish_audit(c, c.post("/v1/audits", json=spec, headers=auth(c.key)).json()["id"])
        assert body["status"] == "succeeded", body["error"]
        report = c.get(f"/v1/audits/{body['id']}/report", headers=auth(c.key)).json()
    assert {r["protocol"] for r in server.requests} == {"recaudit.remote-policy/v2"}
    sims = {u["id"] for r in server.requests for u in r["users"]}
    assert len(sims) == 2 * 20  # 20 users per run, other ids in each replicate's run
    clicked = [h for r in server.requests for u in r["users"] for h in u["history"]]
    assert clicked and set(clicked) <= {str(i) for i in range(30)}
    boundary = report["arms"][0]["boundary"]
    assert boundary["kind"] == "recaudit.remote-policy/v2"
    assert boundary["catalog_items"] == 30 and boundary["cold_users"] == [0, 0]
    assert "salted per audit" in boundary["rule"]
    assert report["arms"][1]["boundary"] is None  # a built-in arm


@pytest.mark.parametrize(
    ("path", "protocol", "reason"),
    [
        ("/range", "v1", "answered 60 item indices outside 0..29 (first: 30)"),
        (
            "/huge-index",
            "v1",
            "item indices outside 0..29 (first: 1000000000000000000000000000000)",
        ),
        ("/nested", "v2", "answered JSON nested too deeply"),
        ("/unknown-ids", "v2", "item id(s) that are not in the scenario's catalog"),
    ],
)
def test_a_remote_policy_that_misbehaves_fails_the_audit_with_the_reason(
    tmp_path, server, path, protocol, reason
):
    with real_service(tmp_path, remote_allowlist=(f"127.0.0.1:{server.port}",)) as c:
        params = {"url": server.url(path), "protocol": protocol}
        spec = {**TINY_SPEC, "policy": {"kind": "remote", "params": params}}
        body = finish_audit(c, c.post("/v1/audits", json=spec, headers=auth(c.key)).json()["id"])
    assert body["status"] == "failed"
    assert reason in body["error"] and "internal" not in body["error"].lower()


def test_a_cancel_reaches_a_remote_call_in_flight(tmp_path, server):
    """DELETE while the audit waits on an endpoint that trickles its answer (with a
    60 s call deadline): the call is abandoned, the audit ends cancelled, and the
    endpoint's connection is closed before it finished sending."""
    with real_service(tmp_path, remote_allowlist=(f"127.0.0.1:{server.port}",)) as c:
        spec = {
            **TINY_SPEC,
            "policy": {"kind": "remote", "params": {"url": server.url("/trickle")}},
        }
        aid = c.post("/v1/audits", json=spec, headers=auth(c.key)).json()["id"]
        wait_for(lambda: server.hits["/trickle"] >= 1, timeout=60)
        assert c.delete(f"/v1/audits/{aid}", headers=auth(c.key)).status_code == 202
        body = finish_audit(c, aid)
    assert body["status"] == "cancelled", body
    assert server.trickle_done.wait(30)
    assert server.hits["/trickle"] == 1 and server.trickles[0][1] is False
