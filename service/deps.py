"""Request dependencies: the services opened in the lifespan, and the caller's tenant."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.engine import Engine

from .config import Settings
from .datasets import DatasetStore
from .jobs import JobStore
from .keys import KeyStore
from .problems import ApiError
from .runner import JobRunner
from .uploads import PolicyStore


class ReadCache:
    """Serialized answers of ``GET /v1/audits/{id}``, the pollers' hot path.

    An entry serves while this process has written no job since it was taken and for at
    most ``ttl_s`` (which bounds how old a change made by another service process, and
    the running time in it, can look). Read-your-writes holds within a process."""

    def __init__(self, ttl_s: float = 0.25, size: int = 4096) -> None:
        self.ttl_s = ttl_s
        self.size = size
        self._entries: dict[tuple[str, str], tuple[float, int, bytes]] = {}

    def get(self, key: tuple[str, str], writes: int) -> bytes | None:
        hit = self._entries.get(key)
        if hit is None:
            return None
        taken, at, body = hit
        if at != writes or time.monotonic() - taken > self.ttl_s:
            return None
        return body

    def put(self, key: tuple[str, str], writes: int, taken: float, body: bytes) -> None:
        """Keep ``body``, read at write count ``writes`` and monotonic time ``taken``."""
        if len(self._entries) >= self.size:
            self._entries.clear()
        self._entries[key] = (taken, writes, body)


@dataclass
class Services:
    """What the lifespan opens once per process."""

    settings: Settings
    engine: Engine
    keys: KeyStore
    jobs: JobStore
    uploads: PolicyStore
    runner: JobRunner
    mlflow_ui: str | None = None  # the MLflow UI's public URL (RECAUDIT_PUBLIC_MLFLOW_URL)
    ray_error: str | None = None
    mlflow_error: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    reads: ReadCache = field(default_factory=ReadCache)
    datasets: DatasetStore | None = None
    dataset_runner: JobRunner | None = None


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
    if creds is None or creds.scheme.lower() != "bearer":
        return tenant_of_key(request.app.state.services, None)
    return tenant_of_key(request.app.state.services, creds.credentials)


def tenant_of_key(svc: Services, key: str | None) -> str:
    """The tenant of an API key (None: none was sent); ApiError 401 otherwise. A cached
    hash lookup; the store on a miss."""
    challenge = {"WWW-Authenticate": 'Bearer realm="recaudit"'}
    if not key:
        raise ApiError(
            401,
            "this endpoint needs an API key: send 'Authorization: Bearer KEY' (an operator "
            "creates keys with 'recaudit keys create --tenant NAME')",
            slug="unauthorized",
            headers=challenge,
        )
    name = svc.keys.tenant_of(key)
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
