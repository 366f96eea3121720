"""Request dependencies: the services opened in the lifespan, and the caller's tenant."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.engine import Engine

from .config import Settings
from .jobs import JobRunner, JobStore
from .keys import KeyStore
from .problems import ApiError
from .uploads import PolicyStore


@dataclass
class Services:
    """What the lifespan opens once per process."""

    settings: Settings
    engine: Engine
    keys: KeyStore
    jobs: JobStore
    uploads: PolicyStore
    runner: JobRunner
    mlflow_ui: str | None = None  # the tracking server's URL when it is one
    ray_error: str | None = None
    mlflow_error: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


async def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


_bearer = HTTPBearer(
    auto_error=False,
    description="An API key from `recaudit keys create --tenant NAME`.",
)


async def tenant(
    request: Request,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The tenant of the request's API key; 401 without a valid one."""
    challenge = {"WWW-Authenticate": 'Bearer realm="recaudit"'}
    if creds is None or creds.scheme.lower() != "bearer":
        raise ApiError(
            401,
            "this endpoint needs an API key: send 'Authorization: Bearer KEY' (an operator "
            "creates keys with 'recaudit keys create --tenant NAME')",
            slug="unauthorized",
            headers=challenge,
        )
    svc: Services = request.app.state.services
    name = svc.keys.tenant_of(creds.credentials)  # a cached hash lookup; the store on a miss
    if name is None:
        raise ApiError(
            401,
            "the API key is not valid (unknown or revoked); ask the operator for a new one",
            slug="bad-key",
            headers=challenge,
        )
    return name


Svc = Annotated[Services, Depends(services)]
Tenant = Annotated[str, Depends(tenant)]
