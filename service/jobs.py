"""Durable audit jobs: a table in the job store and a pool of worker threads.

Life of a job: ``queued`` -> ``running`` -> ``succeeded`` | ``failed`` | ``cancelled``.

- **Submission** inserts a ``queued`` row (an ``Idempotency-Key`` is unique per tenant:
  the same key and body give back the same job).
- **Dispatch.** Each service process runs a dispatcher thread that claims the oldest
  queued jobs up to its concurrency limit with an atomic ``UPDATE ... WHERE status =
  'queued'`` (so several processes sharing a PostgreSQL store never run a job twice) and
  runs them on worker threads. The rest wait in the queue.
- **Progress** is written to the row (throttled) together with a heartbeat.
- **Cancellation** sets ``cancel_requested``; the process running the job sees it within
  a poll interval and sets the audit's cancel event (the audit stops at its next task
  boundary). A queued job is cancelled at once.
- **Restarts.** On start-up, jobs left ``running`` by a process that is gone (same host,
  dead pid or an earlier incarnation; or any host with a heartbeat older than
  ``stale_after_s``) go back to ``queued`` and run again from the start (an audit is
  deterministic given its spec); after ``max_attempts`` runs a job fails with a reason.
  A graceful shutdown stops running audits and puts them back in the queue.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from auditor.executor import Cancelled
from simulator.errors import SpecError

from .store import audits, first_row

log = logging.getLogger("recaudit.service.jobs")

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
ACTIVE = ("queued", "running")

Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class Outcome:
    """What a finished audit leaves in its job row."""

    verdict: str
    exit_code: int
    run_id: str | None = None
    experiment_id: str | None = None


Execute = Callable[[dict[str, Any], Progress, threading.Event], Outcome]


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used before with a different request body."""


def request_hash(body: str) -> str:
    return hashlib.sha256(body.encode()).hexdigest()


def new_id() -> str:
    return "a" + secrets.token_hex(8)


class JobStore:
    """The audits table."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
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
        job_id = new_id()
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
                conn.execute(sa.insert(audits).values(**row))
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
            sa.select(audits).where(audits.c.tenant == tenant, audits.c.idempotency_key == key),
        )

    # ------------------------------------------------------------------- reading
    def get(self, tenant: str | None, job_id: str) -> dict[str, Any] | None:
        q = sa.select(audits).where(audits.c.id == job_id)
        if tenant is not None:
            q = q.where(audits.c.tenant == tenant)
        return first_row(self.engine, q)

    def list_jobs(
        self, tenant: str, status: str | None, limit: int, offset: int
    ) -> tuple[list[dict[str, Any]], int]:
        where = [audits.c.tenant == tenant]
        if status:
            where.append(audits.c.status == status)
        with self.engine.connect() as conn:
            total = conn.execute(
                sa.select(sa.func.count()).select_from(audits).where(*where)
            ).scalar_one()
            rows = conn.execute(
                sa.select(audits)
                .where(*where)
                .order_by(audits.c.created_at.desc(), audits.c.id)
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
                sa.update(audits)
                .where(
                    audits.c.id == job_id, audits.c.tenant == tenant, audits.c.status == "queued"
                )
                .values(
                    status="cancelled",
                    cancel_requested=True,
                    finished_at=now,
                    phase="cancelled before it started",
                )
            )
            conn.execute(
                sa.update(audits)
                .where(
                    audits.c.id == job_id, audits.c.tenant == tenant, audits.c.status == "running"
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
                    sa.update(audits)
                    .where(audits.c.id == job_id, audits.c.status == "queued")
                    .values(
                        status="running",
                        owner=owner,
                        started_at=now,
                        heartbeat=now,
                        attempts=audits.c.attempts + 1,
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
        c = audits.c
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
                sa.update(audits)
                .where(audits.c.id == job_id, audits.c.owner == owner, audits.c.status == "running")
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
                sa.update(audits)
                .where(audits.c.id.in_(ids), audits.c.owner == owner, audits.c.status == "running")
                .values(heartbeat=time.time())
            )

    def cancel_flags(self, ids: list[str]) -> set[str]:
        if not ids:
            return set()
        with self.engine.connect() as conn:
            return set(
                conn.execute(
                    sa.select(audits.c.id).where(audits.c.id.in_(ids), audits.c.cancel_requested)
                ).scalars()
            )

    def finish(self, job_id: str, owner: str, status: str, **values: Any) -> None:
        with self._write() as conn:
            conn.execute(
                sa.update(audits)
                .where(audits.c.id == job_id, audits.c.owner == owner, audits.c.status == "running")
                .values(status=status, finished_at=time.time(), **values)
            )

    def release(self, job_id: str, owner: str, reason: str) -> None:
        """Put a running job back in the queue (this process is stopping)."""
        with self._write() as conn:
            conn.execute(
                sa.update(audits)
                .where(audits.c.id == job_id, audits.c.owner == owner, audits.c.status == "running")
                .values(status="queued", owner=None, heartbeat=None, progress=0.0, phase=reason)
            )

    def recover(self, me: Owner, stale_after_s: float) -> list[str]:
        """Re-queue jobs left 'running' by a process that is gone (cancel those whose
        cancellation was asked). Returns their ids."""
        now = time.time()
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(
                    audits.c.id, audits.c.owner, audits.c.heartbeat, audits.c.cancel_requested
                ).where(audits.c.status == "running")
            ).all()
        out = []
        for job_id, owner, beat, cancel in rows:
            if not _is_dead(owner, beat, me, now, stale_after_s):
                continue
            with self._write() as conn:
                cond = [audits.c.id == job_id, audits.c.status == "running"]
                cond.append(
                    audits.c.owner == owner if owner is not None else audits.c.owner.is_(None)
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
                if conn.execute(sa.update(audits).where(*cond).values(**values)).rowcount:
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


class JobRunner:
    """Runs queued jobs on ``concurrency`` worker threads of this process."""

    def __init__(
        self,
        store: JobStore,
        execute: Execute,
        *,
        concurrency: int = 1,
        per_tenant: int | None = None,
        max_attempts: int = 3,
        stale_after_s: float = 60.0,
        poll_s: float = 0.5,
        heartbeat_s: float = 5.0,
    ) -> None:
        self.store = store
        self.execute = execute
        self.concurrency = concurrency
        self.per_tenant = per_tenant
        self.max_attempts = max_attempts
        self.stale_after_s = stale_after_s
        self.poll_s = poll_s
        self.heartbeat_s = heartbeat_s
        self.me = Owner.me()
        self.owner = str(self.me)
        self._running: dict[str, threading.Event] = {}
        self._user_cancelled: set[str] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._pool: ThreadPoolExecutor | None = None
        self._futures: set[Future[None]] = set()
        self._thread: threading.Thread | None = None
        self.recovered: list[str] = []

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> None:
        self.recovered = self.store.recover(self.me, self.stale_after_s)
        if self.recovered:
            log.warning(
                "re-queued %d interrupted audit(s): %s", len(self.recovered), self.recovered
            )
        self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="recaudit-audit")
        self._thread = threading.Thread(target=self._loop, name="recaudit-dispatch", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop dispatching; stop running audits and put them back in the queue, within
        about ``timeout`` seconds: an audit that has not stopped by then is put back in
        the queue all the same (its thread's late result is not recorded)."""
        deadline = time.monotonic() + timeout
        self._stop.set()
        self._wake.set()
        with self._lock:
            events = list(self._running.values())
        for ev in events:
            ev.set()
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._pool is not None:
            with self._lock:
                futures = list(self._futures)
            wait(futures, timeout=max(0.0, deadline - time.monotonic()))
            self._pool.shutdown(wait=False, cancel_futures=True)
        for job_id in self.running:
            log.warning("audit %s did not stop within %.0f s; re-queued", job_id, timeout)
            self.store.release(job_id, self.owner, "re-queued: the service stopped")

    def wake(self) -> None:
        self._wake.set()

    @property
    def running(self) -> list[str]:
        with self._lock:
            return list(self._running)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ---------------------------------------------------------------- dispatching
    def _loop(self) -> None:
        last_beat = last_recover = time.monotonic()
        while not self._stop.is_set():
            self._wake.wait(self.poll_s)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                now = time.monotonic()
                running = self.running
                for job_id in self.store.cancel_flags(running):
                    with self._lock:
                        ev = self._running.get(job_id)
                        if ev is not None:
                            self._user_cancelled.add(job_id)
                    if ev is not None:
                        ev.set()
                if now - last_beat >= self.heartbeat_s:
                    self.store.heartbeat(self.owner, running)
                    last_beat = now
                if now - last_recover >= max(self.stale_after_s / 2, 1.0):
                    self.store.recover(self.me, self.stale_after_s)
                    last_recover = now
                free = self.concurrency - len(running)
                for row in self.store.claim(self.owner, free, self.max_attempts, self.per_tenant):
                    ev = threading.Event()
                    with self._lock:
                        self._running[row["id"]] = ev
                    assert self._pool is not None
                    future = self._pool.submit(self._run, row, ev)
                    with self._lock:
                        self._futures.add(future)
            except Exception:  # the store was unreachable: try again next tick
                log.exception("dispatcher tick failed")

    def _run(self, row: dict[str, Any], cancel: threading.Event) -> None:
        job_id = row["id"]
        last = [0.0]
        shown = [""]

        def progress(fraction: float, phase: str) -> None:
            now = time.monotonic()
            # throttled, but a new phase always shows (it may last for hours: training)
            if now - last[0] >= 0.25 or fraction >= 1.0 or phase != shown[0]:
                last[0] = now
                shown[0] = phase
                self.store.set_progress(job_id, self.owner, fraction, phase)
            if cancel.is_set():
                raise Cancelled(f"audit {job_id} was cancelled")

        try:
            outcome = self.execute(row, progress, cancel)
            self.store.finish(
                job_id,
                self.owner,
                "succeeded",
                progress=1.0,
                phase="done",
                verdict=outcome.verdict,
                exit_code=outcome.exit_code,
                mlflow_run_id=outcome.run_id,
                mlflow_experiment_id=outcome.experiment_id,
            )
        except Cancelled:
            with self._lock:
                by_user = job_id in self._user_cancelled
            if by_user or not self._stop.is_set():
                self.store.finish(job_id, self.owner, "cancelled", phase="cancelled")
            else:
                self.store.release(job_id, self.owner, "re-queued: the service stopped")
        except SpecError as exc:
            self.store.finish(
                job_id, self.owner, "failed", phase="failed", error=without_paths(str(exc))
            )
        except Exception as exc:
            log.exception("audit %s failed", job_id)
            self.store.finish(
                job_id,
                self.owner,
                "failed",
                phase="failed",
                error=without_paths(f"internal error: {type(exc).__name__}: {exc}"),
            )
        finally:
            with self._lock:
                self._running.pop(job_id, None)
                self._user_cancelled.discard(job_id)
                self._futures = {f for f in self._futures if not f.done()}
            self._wake.set()


def spec_body(spec: Any) -> str:
    """The canonical JSON of a spec (what is stored and hashed for idempotency)."""
    return json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))


def without_paths(message: str) -> str:
    """A message for a tenant: where this service is installed never shows (package
    data reads ``data:<dir>/<file>``, the rest of the installation ``<recaudit>``)."""
    from pathlib import Path

    from simulator.io import DATA_DIR, DATA_PREFIX

    message = message.replace(f"{DATA_DIR}{os.sep}", DATA_PREFIX)
    return message.replace(str(Path(__file__).resolve().parents[1]), "<recaudit>")
