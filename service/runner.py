"""The worker side of durable audit jobs: each service process runs a dispatcher thread
that claims queued jobs from the job store (:mod:`service.jobs`) up to its concurrency
limit and runs them on worker threads; the rest wait in the queue.

- **Progress** is written to the job's row (throttled) together with a heartbeat.
- **Cancellation.** The process running a job sees its ``cancel_requested`` within a poll
  interval and sets the audit's cancel event (the audit stops at its next task boundary).
- **Restarts.** On start-up, jobs left ``running`` by a process that is gone are put back
  in the queue (:meth:`~service.jobs.JobStore.recover`). A graceful shutdown stops
  running audits and puts them back in the queue.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from auditor.executor import Cancelled
from simulator.errors import SpecError

from .jobs import JobStore, Owner

log = logging.getLogger("recaudit.service.runner")

Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class Outcome:
    """What a finished audit leaves in its job row."""

    verdict: str
    exit_code: int
    run_id: str | None = None
    experiment_id: str | None = None


Execute = Callable[[dict[str, Any], Progress, threading.Event], Outcome]


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


def without_paths(message: str) -> str:
    """A message for a tenant: where this service is installed never shows (package
    data reads ``data:<dir>/<file>``, the rest of the installation ``<recaudit>``)."""
    from pathlib import Path

    from simulator.io import DATA_DIR, DATA_PREFIX

    message = message.replace(f"{DATA_DIR}{os.sep}", DATA_PREFIX)
    return message.replace(str(Path(__file__).resolve().parents[1]), "<recaudit>")
