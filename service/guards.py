"""ASGI guards in front of the routes: a request that carries a body is authenticated
from its headers before a byte of the body is read, and uploads take one of a bounded
number of slots (503 when all are taken), so that no client without a key, and no crowd
of uploads, can make the service buffer."""

from __future__ import annotations

import threading
from typing import Any

from fastapi.security.utils import get_authorization_scheme_param

from .deps import tenant_of_key
from .problems import ApiError, problem

_BODY_METHODS = (b"POST", b"PUT", b"PATCH")


class AuthBeforeBody:
    """Answers 401 to a ``/v1`` request with a body and no valid key at once, from the
    headers; answers 503 to an upload when ``max_uploads`` are being received and
    validated already. Everything else goes on unchanged."""

    def __init__(self, app: Any, upload_paths: tuple[str, ...], max_uploads: int) -> None:
        self.app = app
        self.upload_paths = upload_paths
        self.max_uploads = max_uploads
        self._uploads = 0
        self._lock = threading.Lock()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if (
            scope["type"] != "http"
            or scope["method"].encode() not in _BODY_METHODS
            or not scope["path"].startswith("/v1/")
        ):
            await self.app(scope, receive, send)
            return
        svc = getattr(scope["app"].state, "services", None)
        if svc is not None:
            header = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
            scheme, key = get_authorization_scheme_param(header.decode("latin-1"))
            try:
                tenant_of_key(svc, key if scheme.lower() == "bearer" else None)
            except ApiError as exc:
                await _answer(send, scope, exc)
                return
        if scope["path"] not in self.upload_paths:
            await self.app(scope, receive, send)
            return
        with self._lock:
            full = self._uploads >= self.max_uploads
            if not full:
                self._uploads += 1
        if full:
            await _answer(
                send,
                scope,
                ApiError(
                    503,
                    f"{self.max_uploads} upload(s) are being received and checked already; "
                    "retry in a few seconds",
                    headers={"Retry-After": "5"},
                ),
            )
            return
        try:
            await self.app(scope, receive, send)
        finally:
            with self._lock:
                self._uploads -= 1


async def _answer(send: Any, scope: dict[str, Any], exc: ApiError) -> None:
    resp = problem(
        exc.status, exc.detail, slug=exc.slug, instance=scope["path"], headers=exc.headers
    )
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in resp.headers.items()]
    headers.append((b"connection", b"close"))  # the unread body is not waited for
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": resp.body})
