"""/healthz (the process is up) and /readyz (Ray, MLflow and the job store usable)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from ..deps import Svc
from ..schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness")
async def healthz() -> Health:
    """200 while the process serves requests."""
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Health,
    summary="Readiness",
    responses={503: {"model": Health, "description": "A dependency is not usable."}},
)
def readyz(svc: Svc) -> JSONResponse:
    """200 when Ray is reachable, MLflow answers and the job store takes a write; 503
    with the failing checks otherwise."""
    from .. import readiness

    checks = readiness.check(svc)
    ok = all(v == "ok" for v in checks.values())
    body = Health(status="ok" if ok else "unavailable", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)
