"""Durable audit jobs: the job store, a table shared by every service process.

Life of a job: ``queued`` -> ``running`` -> ``succeeded`` | ``failed`` | ``cancelled``.

- **Submission** inserts a ``queued`` row (an ``Idempotency-Key`` is unique per tenant:
  the same key and body give back the same job).
- **Claiming** is an atomic ``UPDATE ... WHERE status = 'queued'`` of the oldest queued
  jobs (fair between tenants), so several processes sharing a PostgreSQL store never run
  a job twice.
- **Progress** is written to the row together with a heartbeat; **cancellation** sets
  ``cancel_requested`` (a queued job is cancelled at once).
- **Recovery.** Jobs left ``running`` by a process that is gone (same host, dead pid or
  an earlier incarnation; or any host with a heartbeat older than ``stale_after_s``) go
  back to ``queued`` and run again from the start (an audit is deterministic given its
  spec); after ``max_attempts`` runs a job fails with a reason.

:mod:`service.runner` dispatches the queued jobs to worker threads of one process.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import secrets
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from .store import audits, first_row

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
ACTIVE = ("queued", "running")


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used before with a different request body."""


def request_hash(body: str) -> str:
    return hashlib.sha256(body.encode()).hexdigest()


def new_id(prefix: str = "a") -> str:
    return prefix + secrets.token_hex(8)


class JobStore:
    """A table of durable jobs: the audits table, or another with its columns (dataset
    derivations); ``prefix`` starts the ids of its jobs."""

    def __init__(self, engine: Engine, table: sa.Table = audits, prefix: str = "a") -> None:
        self.engine = engine
        self.table = table
        self.prefix = prefix
        # Counts this process's committed writes that change what a reader sees (all but
        # heartbeats): a cached read taken at an older count is out of date.
        self.writes = 0
        self._count = itertools.count(1)  # next() on it is atomic

    @contextmanager
    def _write(self) -> Iterator[sa.Connection]:
        """A transaction; the write count moves on once it has ended (after the commit;
        a failed one costs readers no more than a cache miss)."""
        try:
            with self.engine.begin() as conn:
                yield conn
        finally:
            self.writes = next(self._count)

    # ---------------------------------------------------------------- submission
    def create(
        self,
        tenant: str,
        spec_json: str,
        *,
        policy_kind: str,
        scenario: str,
        idempotency_key: str | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Insert a queued job; (row, created). With a known idempotency key and the same
        body, the existing job and False; with another body, IdempotencyConflict."""
        digest = request_hash(spec_json)
        if idempotency_key is not None:
            found = self._by_key(tenant, idempotency_key)
            if found is not None:
                return self._replay(found, digest), False
        job_id = new_id(self.prefix)
        row: dict[str, Any] = {
            "id": job_id,
            "tenant": tenant,
            "status": "queued",
            "spec": spec_json,
            "policy_kind": policy_kind[:64],
            "scenario": scenario[:128],
            "idempotency_key": idempotency_key,
            "request_hash": digest,
            "progress": 0.0,
            "phase": "queued",
            "created_at": time.time(),
            "attempts": 0,
            "cancel_requested": False,
        }
        try:
            with self._write() as conn:
                conn.execute(sa.insert(self.table).values(**row))
        except sa.exc.IntegrityError:
            found = self._by_key(tenant, idempotency_key) if idempotency_key else None
            if found is None:
                raise
            return self._replay(found, digest), False
        created = self.get(tenant, job_id)
        assert created is not None
        return created, True

    def _replay(self, found: dict[str, Any], digest: str) -> dict[str, Any]:
        if found["request_hash"] != digest:
            raise IdempotencyConflict(found["id"])
        return found

    def _by_key(self, tenant: str, key: str) -> dict[str, Any] | None:
        return first_row(
            self.engine,
            sa.select(self.table).where(
                self.table.c.tenant == tenant, self.table.c.idempotency_key == key
            ),
        )

    # ------------------------------------------------------------------- reading
    def get(self, tenant: str | None, job_id: str) -> dict[str, Any] | None:
        q = sa.select(self.table).where(self.table.c.id == job_id)
        if tenant is not None:
            q = q.where(self.table.c.tenant == tenant)
        return first_row(self.engine, q)

    def list_jobs(
        self, tenant: str, status: str | None, limit: int, offset: int
    ) -> tuple[list[dict[str, Any]], int]:
        where = [self.table.c.tenant == tenant]
        if status:
            where.append(self.table.c.status == status)
        with self.engine.connect() as conn:
            total = conn.execute(
                sa.select(sa.func.count()).select_from(self.table).where(*where)
            ).scalar_one()
            rows = conn.execute(
                sa.select(self.table)
                .where(*where)
                .order_by(self.table.c.created_at.desc(), self.table.c.id)
                .limit(limit)
                .offset(offset)
            ).mappings()
            return [dict(r) for r in rows], int(total)

    # ---------------------------------------------------------------- cancelling
    def request_cancel(self, tenant: str, job_id: str) -> dict[str, Any] | None:
        """Cancel a queued job at once; flag a running one. Returns the row after."""
        now = time.time()
        with self._write() as conn:
            conn.execute(
                sa.update(self.table)
                .where(
                    self.table.c.id == job_id,
                    self.table.c.tenant == tenant,
                    self.table.c.status == "queued",
                )
                .values(
                    status="cancelled",
                    cancel_requested=True,
                    finished_at=now,
                    phase="cancelled before it started",
                )
            )
            conn.execute(
                sa.update(self.table)
                .where(
                    self.table.c.id == job_id,
                    self.table.c.tenant == tenant,
                    self.table.c.status == "running",
                )
                .values(cancel_requested=True, phase="cancelling")
            )
        return self.get(tenant, job_id)

    # ------------------------------------------------------------- the dispatcher
    def claim(
        self, owner: str, n: int, max_attempts: int, per_tenant: int | None = None
    ) -> list[dict[str, Any]]:
        """Atomically take up to ``n`` queued jobs for ``owner``, fairly between tenants:
        each time, the oldest job of the tenant with the fewest running jobs, ties going
        to the tenant served least recently; a tenant already running ``per_tenant``
        jobs of this owner waits (so one tenant's queue cannot hold every worker)."""
        out: list[dict[str, Any]] = []
        tries = 0
        while len(out) < n and tries < 4 * n + 4:
            tries += 1
            job_id = self._next_fair(owner, per_tenant)
            if job_id is None:
                break
            now = time.time()
            with self._write() as conn:
                got = conn.execute(
                    sa.update(self.table)
                    .where(self.table.c.id == job_id, self.table.c.status == "queued")
                    .values(
                        status="running",
                        owner=owner,
                        started_at=now,
                        heartbeat=now,
                        attempts=self.table.c.attempts + 1,
                        progress=0.0,
                        phase="starting",
                    )
                ).rowcount
            if got != 1:
                continue  # another process took it
            row = self.get(None, job_id)
            if row is None:
                continue
            if row["attempts"] > max_attempts:
                self.finish(
                    job_id,
                    owner,
                    "failed",
                    error=f"the audit was interrupted {max_attempts} time(s) by service restarts "
                    "and was not run again; submit it anew",
                )
                continue
            out.append(row)
        return out

    def _next_fair(self, owner: str, per_tenant: int | None) -> str | None:
        c = self.table.c
        with self.engine.connect() as conn:
            oldest = dict(
                conn.execute(
                    sa.select(c.tenant, sa.func.min(c.created_at))
                    .where(c.status == "queued")
                    .group_by(c.tenant)
                ).all()
            )
            if not oldest:
                return None
            running: dict[str, int] = {}
            mine: dict[str, int] = {}
            for tenant, who, count in conn.execute(
                sa.select(c.tenant, c.owner, sa.func.count())
                .where(c.status == "running", c.tenant.in_(list(oldest)))
                .group_by(c.tenant, c.owner)
            ).all():
                running[tenant] = running.get(tenant, 0) + count
                if who == owner:
                    mine[tenant] = mine.get(tenant, 0) + count
            served = dict(
                conn.execute(
                    sa.select(c.tenant, sa.func.max(c.started_at))
                    .where(c.tenant.in_(list(oldest)), c.started_at.is_not(None))
                    .group_by(c.tenant)
                ).all()
            )
            ready = [t for t in oldest if per_tenant is None or mine.get(t, 0) < per_tenant]
            if not ready:
                return None
            tenant = min(
                ready, key=lambda t: (running.get(t, 0), served.get(t) or 0.0, oldest[t], t)
            )
            job_id: str | None = conn.execute(
                sa.select(c.id)
                .where(c.status == "queued", c.tenant == tenant)
                .order_by(c.created_at, c.id)
                .limit(1)
            ).scalar()
            return job_id

    def set_progress(self, job_id: str, owner: str, fraction: float, phase: str) -> None:
        with self._write() as conn:
            conn.execute(
                sa.update(self.table)
                .where(
                    self.table.c.id == job_id,
                    self.table.c.owner == owner,
                    self.table.c.status == "running",
                )
                .values(
                    progress=max(0.0, min(1.0, float(fraction))),
                    phase=phase[:200],
                    heartbeat=time.time(),
                )
            )

    def heartbeat(self, owner: str, ids: list[str]) -> None:
        if not ids:
            return
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(self.table)
                .where(
                    self.table.c.id.in_(ids),
                    self.table.c.owner == owner,
                    self.table.c.status == "running",
                )
                .values(heartbeat=time.time())
            )

    def cancel_flags(self, ids: list[str]) -> set[str]:
        if not ids:
            return set()
        with self.engine.connect() as conn:
            return set(
                conn.execute(
                    sa.select(self.table.c.id).where(
                        self.table.c.id.in_(ids), self.table.c.cancel_requested
                    )
                ).scalars()
            )

    def finish(self, job_id: str, owner: str, status: str, **values: Any) -> None:
        with self._write() as conn:
            conn.execute(
                sa.update(self.table)
                .where(
                    self.table.c.id == job_id,
                    self.table.c.owner == owner,
                    self.table.c.status == "running",
                )
                .values(status=status, finished_at=time.time(), **values)
            )

    def release(self, job_id: str, owner: str, reason: str) -> None:
        """Put a running job back in the queue (this process is stopping)."""
        with self._write() as conn:
            conn.execute(
                sa.update(self.table)
                .where(
                    self.table.c.id == job_id,
                    self.table.c.owner == owner,
                    self.table.c.status == "running",
                )
                .values(status="queued", owner=None, heartbeat=None, progress=0.0, phase=reason)
            )

    def recover(self, me: Owner, stale_after_s: float) -> list[str]:
        """Re-queue jobs left 'running' by a process that is gone (cancel those whose
        cancellation was asked). Returns their ids."""
        now = time.time()
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(
                    self.table.c.id,
                    self.table.c.owner,
                    self.table.c.heartbeat,
                    self.table.c.cancel_requested,
                ).where(self.table.c.status == "running")
            ).all()
        out = []
        for job_id, owner, beat, cancel in rows:
            if not _is_dead(owner, beat, me, now, stale_after_s):
                continue
            with self._write() as conn:
                cond = [self.table.c.id == job_id, self.table.c.status == "running"]
                cond.append(
                    self.table.c.owner == owner
                    if owner is not None
                    else self.table.c.owner.is_(None)
                )
                if cancel:
                    values: dict[str, Any] = {
                        "status": "cancelled",
                        "finished_at": now,
                        "phase": "cancelled (its service process stopped)",
                    }
                else:
                    values = {
                        "status": "queued",
                        "owner": None,
                        "heartbeat": None,
                        "progress": 0.0,
                        "phase": "re-queued after a service restart",
                    }
                if conn.execute(sa.update(self.table).where(*cond).values(**values)).rowcount:
                    out.append(job_id)
        return out


@dataclass(frozen=True)
class Owner:
    """Who runs a job: host, pid and a token unique to this process's lifetime."""

    host: str
    pid: int
    token: str

    @classmethod
    def me(cls) -> Owner:
        return cls(socket.gethostname(), os.getpid(), secrets.token_hex(4))

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}:{self.token}"

    @classmethod
    def parse(cls, text: str) -> Owner | None:
        host, _, rest = text.rpartition(":")
        host, _, pid = host.rpartition(":")
        if not pid.isdigit():
            return None
        return cls(host, int(pid), rest)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_dead(owner: str | None, beat: float | None, me: Owner, now: float, stale: float) -> bool:
    if owner is None or beat is None:
        return True
    other = Owner.parse(owner)
    if other is not None and other.host == me.host:
        if other.pid == me.pid:
            return other.token != me.token  # an earlier incarnation with the same pid
        if not _pid_alive(other.pid):
            return True
    return now - beat > stale


def spec_body(spec: Any) -> str:
    """The canonical JSON of a spec (what is stored and hashed for idempotency)."""
    return json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
