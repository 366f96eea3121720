"""Property-based fuzzing of the API from its own OpenAPI schema (schemathesis): no
request, valid or not, with or without a key, gets a 5xx; every error is problem+json."""

from __future__ import annotations

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings

from service.app import create_app

from .service_helpers import FakeAuditor, auth, make_key
from .service_helpers import settings as service_settings

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def running_app(tmp_path_factory):
    home = tmp_path_factory.mktemp("fuzz")
    s = service_settings(home, remote_allowlist=("127.0.0.1:9",), max_user_steps=100_000)
    app = create_app(s, execute=FakeAuditor(s))
    with TestClient(app):  # runs the lifespan: the job store and runner stay open
        app.state.fuzz_key = make_key(s, "acme")
        yield app


FUZZ = settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)


def _operations(app):
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    ops = [result.ok() for result in schema.get_all_operations()]
    assert len(ops) >= 13  # every endpoint of the API
    return ops


def _check(case, headers):
    response = case.call(headers=headers)
    assert response.status_code < 500, (case.method, case.path, response.text)
    if response.status_code >= 400:
        ctype = response.headers.get("content-type") or [""]
        ctype = ctype[0] if isinstance(ctype, list) else ctype
        assert ctype.startswith("application/problem+json"), (case.path, response.text)
        body = response.json()
        assert body["status"] == response.status_code and body["detail"]
    return response


def test_no_request_with_a_key_gets_a_server_error(running_app):
    headers = auth(running_app.state.fuzz_key)
    seen: dict[str, set[int]] = {}
    for op in _operations(running_app):

        @FUZZ
        @given(case=op.as_strategy())
        def run(case):
            r = _check(case, headers)
            seen.setdefault(f"{case.method} {case.path}", set()).add(r.status_code)

        run()
    # the fuzzer reached past authentication into the handlers
    assert seen["POST /v1/audits"] & {202, 422}
    assert 200 in seen["GET /v1/audits"] and 200 in seen["GET /v1/scenarios"]


def test_no_request_without_a_key_gets_a_server_error(running_app):
    for op in _operations(running_app):

        @FUZZ
        @given(case=op.as_strategy())
        def run(case):
            r = _check(case, {})
            if case.path.startswith("/v1/"):
                assert r.status_code in (401, 404, 405, 413, 422), r.text

        run()
