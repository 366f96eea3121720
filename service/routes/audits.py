"""/v1/audits: submit, list, read, cancel audits; their reports and figures."""

from __future__ import annotations

import functools
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Query, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.security.utils import get_authorization_scheme_param

from auditor.budget import BudgetExceeded
from auditor.spec import AuditSpec
from auditor.tracking import run_link

from ..datasets import with_tenant_scenario
from ..deps import Svc, Tenant
from ..intake import check_audit
from ..jobs import STATUSES, IdempotencyConflict, spec_body
from ..problems import MEDIA_TYPE, ApiError, Problem
from ..schemas import (
    AUDIT_EXAMPLES,
    Audit,
    AuditLinks,
    AuditPage,
    AuditSummary,
    AuditTimings,
    Figures,
)

router = APIRouter(prefix="/v1/audits", tags=["audits"])

FIGURE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}\.png$")
_ID = r"a[0-9a-f]{16}"  # service.jobs.new_id
_ID_RE = re.compile(rf"^{_ID}$")


def _problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {c: {"model": Problem, "content": {MEDIA_TYPE: {}}} for c in codes}


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _links(row: dict[str, Any], mlflow_ui: str | None) -> AuditLinks:
    base = f"/v1/audits/{row['id']}"
    exp, run = row["mlflow_experiment_id"], row["mlflow_run_id"]
    return AuditLinks(
        self=base,
        report=f"{base}/report",
        report_html=f"{base}/report.html",
        figures=f"{base}/figures",
        mlflow=run_link(exp, run, mlflow_ui or ""),  # public URL only
    )


@functools.lru_cache(maxsize=1024)
def _spec(text: str) -> AuditSpec:
    """Specs never change once stored: parse each once."""
    return AuditSpec.model_validate_json(text)


def summary(row: dict[str, Any], mlflow_ui: str | None = None) -> AuditSummary:
    return AuditSummary(
        id=row["id"],
        status=row["status"],
        policy=row["policy_kind"],
        scenario=row["scenario"],
        progress=row["progress"],
        verdict=row["verdict"],
        created=iso(row["created_at"]) or "",
        links=_links(row, mlflow_ui),
    )


def full(row: dict[str, Any], mlflow_ui: str | None = None, now: float | None = None) -> Audit:
    now = time.time() if now is None else now
    started, finished = row["started_at"], row["finished_at"]
    queued_s = (started or finished or now) - row["created_at"]
    running_s = None if started is None else (finished or now) - started
    links = _links(row, mlflow_ui)
    return Audit(
        **summary(row, mlflow_ui).model_dump(exclude={"links"}),
        links=links,
        phase=row["phase"],
        started=iso(started),
        finished=iso(finished),
        timings=AuditTimings(
            queued_s=round(max(0.0, queued_s), 3),
            running_s=None if running_s is None else round(max(0.0, running_s), 3),
        ),
        exit_code=row["exit_code"],
        error=row["error"],
        attempts=row["attempts"],
        cancel_requested=bool(row["cancel_requested"]),
        mlflow_run_id=row["mlflow_run_id"],
        mlflow_experiment_id=row["mlflow_experiment_id"],
        mlflow_url=links.mlflow,
        spec=_spec(row["spec"]),
    )


def _get(svc: Svc, tenant: str, audit_id: str) -> dict[str, Any]:
    row = svc.jobs.get(tenant, audit_id) if _ID_RE.match(audit_id) else None
    if row is None:
        raise ApiError(404, f"no audit {audit_id!r} (see GET /v1/audits)")
    return row


@router.post(
    "",
    status_code=202,
    response_model=Audit,
    summary="Submit an audit",
    responses=_problems(401, 413, 422),
)
def submit(
    spec: Annotated[AuditSpec, Body(openapi_examples=AUDIT_EXAMPLES)],
    svc: Svc,
    tenant: Tenant,
    response: Response,
    idempotency_key: Annotated[
        str | None,
        Header(
            max_length=255,
            description="Makes the submission safe to retry: the same key and body give "
            "back the same audit (per tenant); the same key with another body is refused.",
        ),
    ] = None,
) -> Audit:
    """Queue an audit of ``spec`` (the CLI's ``--spec`` file format) and answer 202 with
    its id, status and links. Poll ``GET /v1/audits/{id}`` until it is done."""
    spec, own = with_tenant_scenario(spec, tenant, svc.datasets)
    try:
        check_audit(spec, tenant, svc.settings, svc.uploads, own)
    except BudgetExceeded as exc:
        raise ApiError(422, str(exc), slug="budget") from None
    body = spec_body(spec)
    scenario = spec.scenario if isinstance(spec.scenario, str) else spec.scenario.id
    try:
        row, created = svc.jobs.create(
            tenant,
            body,
            policy_kind=spec.policy.kind,
            scenario=scenario,
            idempotency_key=idempotency_key,
        )
    except IdempotencyConflict as exc:
        raise ApiError(
            422,
            f"the Idempotency-Key was already used for audit {exc} with a different body; "
            "use a new key for a new audit",
            slug="idempotency-key-reused",
        ) from None
    if created:
        svc.runner.wake()
    response.headers["Location"] = f"/v1/audits/{row['id']}"
    return full(row, svc.mlflow_ui)


@router.get("", response_model=AuditPage, summary="List audits", responses=_problems(401, 422))
def list_audits(
    svc: Svc,
    tenant: Tenant,
    status: Annotated[
        str | None, Query(description=f"Only audits with this status ({', '.join(STATUSES)}).")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100, description="Page size.")] = 20,
    offset: Annotated[int, Query(ge=0, le=10**9, description="Items to skip.")] = 0,
) -> AuditPage:
    """This tenant's audits, newest first."""
    if status is not None and status not in STATUSES:
        raise ApiError(422, f"unknown status {status!r}; one of {', '.join(STATUSES)}")
    rows, total = svc.jobs.list_jobs(tenant, status, limit, offset)
    nxt = None
    if offset + len(rows) < total:
        nxt = f"/v1/audits?limit={limit}&offset={offset + limit}" + (
            f"&status={status}" if status else ""
        )
    return AuditPage(
        items=[summary(r, svc.mlflow_ui) for r in rows],
        total=total,
        limit=limit,
        offset=offset,
        next=nxt,
    )


@router.get(
    "/{audit_id}", response_model=Audit, summary="Read an audit", responses=_problems(401, 404)
)
async def read(audit_id: str, svc: Svc, tenant: Tenant) -> Response:
    """Status, progress, timings; the verdict and MLflow run once done. The answer may be
    up to a quarter of a second old."""
    writes = svc.jobs.writes  # before reading the row: a write after it spoils the entry
    taken = time.monotonic()
    if svc.settings.is_sqlite:  # a local read of one row: cheaper than a thread hop
        row = _get(svc, tenant, audit_id)
    else:
        row = await run_in_threadpool(_get, svc, tenant, audit_id)
    # serialized once per change, without re-validating the model; repeated reads are
    # answered from the cache by CachedStatusReads, in front of the app
    body = full(row, svc.mlflow_ui).model_dump_json().encode()
    svc.reads.put((tenant, audit_id), writes, taken, body)
    return Response(body, media_type="application/json")


class CachedStatusReads:
    """ASGI middleware in front of the app: answers ``GET /v1/audits/{id}`` straight from
    the read cache when it holds a fresh answer for the caller's tenant, skipping routing
    and dependency solving (most of a read's cost). Everything else, misses and bad keys
    included, goes on to the app, which answers and fills the cache."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            m = _STATUS_PATH.match(scope["path"])
            body = _cached(scope, m.group(1)) if m is not None else None
            if body is not None:
                headers = [
                    (b"content-length", str(len(body)).encode()),
                    (b"content-type", b"application/json"),
                ]
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


_STATUS_PATH = re.compile(rf"^{router.prefix}/({_ID})$")


def _cached(scope: dict[str, Any], audit_id: str) -> bytes | None:
    svc = getattr(scope["app"].state, "services", None)
    if svc is None:
        return None
    header = next((v for k, v in scope["headers"] if k == b"authorization"), None)
    if header is None:
        return None
    # parsed as the route's HTTPBearer parses it, then the same cached key lookup
    scheme, key = get_authorization_scheme_param(header.decode("latin-1"))
    if scheme.lower() != "bearer" or not key:
        return None
    tenant = svc.keys.tenant_of(key)
    if tenant is None:
        return None
    body: bytes | None = svc.reads.get((tenant, audit_id), svc.jobs.writes)
    return body


@router.delete(
    "/{audit_id}",
    response_model=Audit,
    summary="Cancel an audit",
    responses={202: {"model": Audit}, **_problems(401, 404, 409)},
)
def cancel(audit_id: str, svc: Svc, tenant: Tenant, response: Response) -> Audit:
    """Cancel a queued audit (200, status 'cancelled') or ask a running one to stop (202:
    it becomes 'cancelled' at its next task boundary). A finished audit answers 409."""
    row = _get(svc, tenant, audit_id)
    if row["status"] not in ("queued", "running"):
        raise ApiError(409, f"audit {audit_id} already {row['status']}; there is nothing to cancel")
    after = svc.jobs.request_cancel(tenant, audit_id)
    assert after is not None
    svc.runner.wake()
    if after["status"] == "running":
        response.status_code = 202
    elif after["status"] not in ("cancelled",):
        raise ApiError(
            409, f"audit {audit_id} already {after['status']}; there is nothing to cancel"
        )
    return full(after, svc.mlflow_ui)


def _report_dir(svc: Svc, tenant: str, audit_id: str) -> Path:
    row = _get(svc, tenant, audit_id)
    if row["status"] != "succeeded":
        raise ApiError(
            409,
            f"audit {audit_id} is {row['status']}; its report exists once it has succeeded",
            slug="not-ready",
        )
    d = svc.settings.reports_dir / tenant / audit_id
    if not (d / "report.json").is_file():
        raise ApiError(404, f"the report of audit {audit_id} is no longer kept on this service")
    return d


@router.get(
    "/{audit_id}/report",
    summary="The JSON report",
    responses={
        200: {"content": {"application/json": {}}, "description": "recaudit.audit-report/v1"},
        **_problems(401, 404, 409),
    },
)
def report_json(audit_id: str, svc: Svc, tenant: Tenant) -> Response:
    """The audit report (schema ``recaudit.audit-report/v1``)."""
    d = _report_dir(svc, tenant, audit_id)
    return Response((d / "report.json").read_bytes(), media_type="application/json")


@router.get(
    "/{audit_id}/report.html",
    summary="The HTML report",
    response_class=HTMLResponse,
    responses=_problems(401, 404, 409),
)
def report_html(audit_id: str, svc: Svc, tenant: Tenant) -> Response:
    """The self-contained HTML report."""
    d = _report_dir(svc, tenant, audit_id)
    if not (d / "report.html").is_file():
        raise ApiError(404, f"audit {audit_id} has no HTML report")
    return HTMLResponse((d / "report.html").read_text(encoding="utf-8"))


@router.get(
    "/{audit_id}/figures",
    response_model=Figures,
    summary="The report's figures",
    responses=_problems(401, 404, 409),
)
def figures(audit_id: str, svc: Svc, tenant: Tenant) -> Figures:
    d = _report_dir(svc, tenant, audit_id) / "figures"
    names = sorted(p.name for p in d.glob("*.png")) if d.is_dir() else []
    return Figures(figures={n: f"/v1/audits/{audit_id}/figures/{n}" for n in names})


@router.get(
    "/{audit_id}/figures/{name}",
    summary="One figure (PNG)",
    response_class=FileResponse,
    responses={200: {"content": {"image/png": {}}}, **_problems(401, 404, 409)},
)
def figure(audit_id: str, name: str, svc: Svc, tenant: Tenant) -> FileResponse:
    if not FIGURE_RE.match(name):
        raise ApiError(404, f"no figure {name!r}")
    path = _report_dir(svc, tenant, audit_id) / "figures" / name
    if not path.is_file():
        raise ApiError(404, f"no figure {name!r} in audit {audit_id}")
    return FileResponse(path, media_type="image/png")
