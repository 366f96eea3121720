"""Where jobs run: in this process, or as Ray tasks (embedded Ray or a cluster).

This is the one module that starts Ray work. Job functions are plain Python; Ray is added
at the edge with ``ray.remote``. Results are put back in job order, so the backend never
changes an outcome.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from simulator.errors import SpecError

J = TypeVar("J")
R = TypeVar("R")


class Cancelled(Exception):
    """The caller asked the jobs to stop; unfinished ones were cancelled."""


def resolve_ray_address(use_ray: bool, address: str | None) -> str | None:
    """'' or None with use_ray: embedded Ray ("local"); an address (or RAY_ADDRESS): a cluster.
    Returns None when jobs should run in process."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        return address
    return "local" if use_ray else None


def _check_reachable(address: str, timeout: float = 3.0) -> None:
    """Fail fast on a cluster address nobody listens on (Ray itself retries for minutes)."""
    import socket

    target = address.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto" and other forms are left to Ray
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise SpecError(f"cannot connect to Ray at {address}: {exc.strerror or exc}") from None


def _use_cluster_token() -> None:
    """Clusters made by ``ray start`` require token authentication by default and keep the
    token in ~/.ray/auth_token (or RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH). Present it when
    one exists, unless RAY_AUTH_MODE says otherwise."""
    from pathlib import Path

    if "RAY_AUTH_MODE" in os.environ:
        return
    if (
        os.environ.get("RAY_AUTH_TOKEN")
        or os.environ.get("RAY_AUTH_TOKEN_PATH")
        or (Path.home() / ".ray" / "auth_token").is_file()
    ):
        os.environ["RAY_AUTH_MODE"] = "token"


def ensure_ray(address: str) -> None:
    """Connect to a cluster, or start embedded Ray once per process (dashboard off)."""
    if address != "local":
        _use_cluster_token()  # before Ray reads its configuration
    import ray

    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {
        "ignore_reinit_error": True,
        "logging_level": "ERROR",
        "log_to_driver": False,
    }
    try:
        if address == "local":
            ray.init(
                address="local",
                num_cpus=os.cpu_count() or 1,
                include_dashboard=False,
                **kwargs,
            )
        else:
            _check_reachable(address)
            ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise SpecError(f"cannot connect to Ray at {address}: {exc}") from None


def run_jobs(
    fn: Callable[[J], R],
    jobs: Sequence[J],
    *,
    ray_address: str | None = None,
    num_cpus: float = 1,
    on_done: Callable[[int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[R]:
    """Run ``fn`` over ``jobs``: in process when ``ray_address`` is None, else as Ray
    tasks (``"local"`` starts embedded Ray). ``on_done(i)`` is called as job i finishes.
    When ``should_stop()`` turns true, unfinished jobs are cancelled and
    :class:`Cancelled` is raised (checked between jobs in process, twice a second on Ray).
    """
    stop = should_stop or (lambda: False)
    if ray_address is None:
        results = []
        for i, job in enumerate(jobs):
            if stop():
                raise Cancelled("stopped before all jobs ran")
            results.append(fn(job))
            if on_done:
                on_done(i)
        return results

    ensure_ray(ray_address)  # first: it sets Ray's environment before the import
    import ray
    from ray.exceptions import RayTaskError

    remote = ray.remote(num_cpus=num_cpus, max_retries=0)(fn)
    refs = [remote.remote(job) for job in jobs]  # submit all, then collect
    index = {ref: i for i, ref in enumerate(refs)}
    out: list[Any] = [None] * len(refs)
    pending = list(refs)
    try:
        while pending:
            if stop():
                raise Cancelled("stopped before all jobs ran")
            done, pending = ray.wait(pending, num_returns=1, timeout=0.5)
            for ref in done:
                out[index[ref]] = ray.get(ref)
                if on_done:
                    on_done(index[ref])
    except RayTaskError as exc:
        _cancel(ray, pending)
        cause = getattr(exc, "cause", None)
        if isinstance(cause, SpecError):
            raise SpecError(str(cause)) from None
        raise
    except BaseException:
        _cancel(ray, pending)
        raise
    return out


def _cancel(ray: Any, refs: list[Any]) -> None:
    for ref in refs:
        try:
            ray.cancel(ref, force=True)
        except Exception:  # already finished or gone
            pass


def shutdown() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
