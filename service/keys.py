"""API keys: one tenant per key, stored as SHA-256 hashes only.

A key is ``ra_`` + ``secrets.token_urlsafe(32)`` (256 random bits), shown once when it is
created. Requests carry it as ``Authorization: Bearer KEY``; the tenant comes from the key
alone, never from the request.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from simulator.errors import SpecError

from .store import api_keys, first_row

PREFIX = "ra_"
TENANT_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_CACHE_S = 5.0  # a revoked key stops working within this time in every process


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class KeyInfo:
    id: str
    tenant: str
    created_at: float
    revoked_at: float | None


def check_tenant(name: str) -> str:
    if not TENANT_RE.match(name or ""):
        raise SpecError(
            f"tenant name {name!r} must be 1-64 lower-case letters, digits, '_', '.', '-' "
            "starting with a letter or digit"
        )
    return name


class KeyStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._cache: dict[str, tuple[str, float]] = {}  # hash -> (tenant, checked at)
        self._lock = threading.Lock()

    def create(self, tenant: str) -> tuple[KeyInfo, str]:
        """A new key for ``tenant``: (its record, the key itself, to show once)."""
        check_tenant(tenant)
        key = PREFIX + secrets.token_urlsafe(32)
        info = KeyInfo(
            id="k" + secrets.token_hex(6), tenant=tenant, created_at=time.time(), revoked_at=None
        )
        with self.engine.begin() as conn:
            conn.execute(
                sa.insert(api_keys).values(
                    id=info.id, tenant=tenant, key_hash=hash_key(key), created_at=info.created_at
                )
            )
        return info, key

    def list_keys(self, tenant: str | None = None) -> list[KeyInfo]:
        q = sa.select(api_keys).order_by(api_keys.c.created_at)
        if tenant:
            q = q.where(api_keys.c.tenant == tenant)
        with self.engine.connect() as conn:
            rows = conn.execute(q).mappings().all()
        return [KeyInfo(r["id"], r["tenant"], r["created_at"], r["revoked_at"]) for r in rows]

    def revoke(self, key_id: str) -> bool:
        with self.engine.begin() as conn:
            n = conn.execute(
                sa.update(api_keys)
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=time.time())
            ).rowcount
        with self._lock:
            self._cache.clear()
        return bool(n)

    def tenant_of(self, key: str) -> str | None:
        """The tenant of a valid, unrevoked key, else None."""
        if not key.startswith(PREFIX) or len(key) > 200:
            return None
        digest = hash_key(key)
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(digest)
        if hit is not None and now - hit[1] < _CACHE_S:
            return hit[0]
        row = first_row(
            self.engine,
            sa.select(api_keys.c.tenant, api_keys.c.key_hash).where(
                api_keys.c.key_hash == digest, api_keys.c.revoked_at.is_(None)
            ),
        )
        if row is None or not hmac.compare_digest(row["key_hash"], digest):
            return None
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = (row["tenant"], now)
        return str(row["tenant"])
