"""Where jobs run: in this process, or as Ray tasks (embedded Ray or a cluster).

This is the one module that starts Ray work. Job functions are plain Python; Ray is added
at the edge with ``ray.remote``. Results are put back in job order, so the backend never
changes an outcome.
"""

from __future__ import annotations

import functools
import json
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from simulator.errors import SpecError

J = TypeVar("J")
R = TypeVar("R")


class Cancelled(Exception):
    """The caller asked the jobs to stop; unfinished ones were cancelled."""


_ambient = threading.local()


@contextmanager
def stop_when(predicate: Callable[[], bool]) -> Iterator[None]:
    """While in this block, :func:`run_jobs` called from this thread stops (raising
    :class:`Cancelled`) once ``predicate()`` is true, and so does every job that runs in
    this thread and calls :func:`check_stop` (training iterations, simulation steps).
    This is how a cancellation reaches work started deep inside an audit."""
    before = getattr(_ambient, "stop", None)
    _ambient.stop = predicate
    try:
        yield
    finally:
        _ambient.stop = before


def check_stop() -> None:
    """Raise :class:`Cancelled` when this thread was asked to stop (see :func:`stop_when`).
    Cheap: long loops call it once per iteration or step. In a Ray worker it never
    fires; there the task itself is cancelled."""
    stop = getattr(_ambient, "stop", None)
    if stop is not None and stop():
        raise Cancelled("stopped")


def resolve_ray_address(use_ray: bool, address: str | None) -> str | None:
    """'' or None with use_ray: embedded Ray ("local"); an address (or RAY_ADDRESS): a cluster.
    Returns None when jobs should run in process."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        return address
    return "local" if use_ray else None


#: ``ray_address`` value asking :class:`BackendChoice` to pick the backend by the work
AUTO = "recaudit:auto"
#: at most this many user-steps (users x steps x arms x replicates) and nothing to train:
#: in process. In process the simulator runs about 250,000-300,000 user-steps per second on
#: 2 cores, so this is about 10-20 s of work; embedded Ray costs 5-15 s to start its workers
#: on such a machine and then gains at most the parallelism the in-process threads have.
IN_PROCESS_MAX_USER_STEPS = 4_000_000


class BackendChoice:
    """Where an audit's jobs run, decided once, with the reason (for the output).

    ``requested``: None (in process), ``"local"`` (embedded Ray), a cluster address, or
    :data:`AUTO` to choose by the work: a configured cluster (``RAY_ADDRESS``) always wins;
    otherwise in process on one core, embedded Ray when two or more learners must be
    trained (they train in parallel as Ray tasks), when two or more arm-replicates retrain
    a model in the loop (``retraining``: RecBole policies, seconds of training each) or
    when the simulation exceeds :data:`IN_PROCESS_MAX_USER_STEPS`, in process for the
    rest. The backend never changes
    the numbers (jobs are plain functions of their data, results kept in job order).
    """

    def __init__(
        self,
        requested: str | None,
        *,
        user_steps: int,
        cores: int | None = None,
        retraining: int = 0,
    ):
        self.requested = requested
        self.user_steps = int(user_steps)
        self.retraining = int(retraining)
        self.cores = cores if cores is not None else _cores()
        self.address: str | None = None
        self.reason = ""
        self._decided = False

    def resolve(self, learners: int = 0) -> str | None:
        """The Ray address (None: in process), deciding on the first call with the
        number of learners still to train."""
        if not self._decided:
            self.address, self.reason = self._decide(learners)
            self._decided = True
        return self.address

    @property
    def name(self) -> str:
        a = self.address
        return "in-process" if a is None else ("ray-local" if a == "local" else a)

    def _decide(self, learners: int) -> tuple[str | None, str]:
        if self.requested != AUTO:
            if self.requested is None:
                return None, "in process, as asked"
            if self.requested == "local":
                return "local", "embedded Ray, as asked"
            return self.requested, "the Ray cluster given"
        cluster = os.environ.get("RAY_ADDRESS") or None
        if cluster and cluster.lower() not in ("local", "none", "in-process"):
            return cluster, "RAY_ADDRESS names a Ray cluster"
        steps = f"{self.user_steps:,} user-steps"
        if self.cores < 2:
            return None, f"{steps} on one core: Ray would add start-up and no parallelism"
        if learners >= 2:
            return "local", f"{learners} learners to train in parallel as Ray tasks"
        if self.retraining >= 2:
            return "local", (
                f"{self.retraining} arm-replicates retrain a model in the loop: they run in "
                f"parallel on {self.cores} cores as Ray tasks"
            )
        if self.user_steps > IN_PROCESS_MAX_USER_STEPS:
            return "local", (
                f"{steps} (over {IN_PROCESS_MAX_USER_STEPS:,}): worth spreading over "
                f"{self.cores} cores on embedded Ray"
            )
        why = "nothing to train" if not learners else "one learner to train"
        return None, (
            f"{steps} (at most {IN_PROCESS_MAX_USER_STEPS:,}) and {why}: "
            "Ray's start-up would cost more than it saves"
        )


def _cores() -> int:
    from simulator.threads import available_cores

    return available_cores()


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


#: Ray reads this switch at import: off, a node takes the loopback address as its own
#: (instead of the machine's), and its processes (GCS, raylet, dashboard and runtime-env
#: agents, workers) listen on loopback only. Its name speaks of Windows and macOS, where
#: it is off by default; on Linux it has the same effect.
_RAY_CLUSTER_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def _loopback_only(ray: Any) -> None:
    """Embedded Ray listens on 127.0.0.1 only: nothing of it (its job API and agents run
    arbitrary code) is reachable from another machine."""
    os.environ[_RAY_CLUSTER_SWITCH] = "0"  # for the processes Ray starts
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False  # for this one, which imported Ray already


def ensure_ray(address: str) -> None:
    """Connect to a cluster, or start embedded Ray once per process (dashboard off)."""
    from simulator.threads import configure_process

    configure_process()  # embedded Ray's workers inherit the wait policy
    if address != "local":
        _use_cluster_token()  # before Ray reads its configuration
    import ray

    if ray.is_initialized():
        return
    if address == "local":
        _loopback_only(ray)
    kwargs: dict[str, Any] = {
        "ignore_reinit_error": True,
        "logging_level": "ERROR",
        "log_to_driver": False,
    }
    # ray.init puts in a SIGTERM handler that exits at once; the caller's (a server's
    # graceful stop) is put back after it
    import signal

    main = threading.current_thread() is threading.main_thread()
    sigterm = signal.getsignal(signal.SIGTERM) if main else None
    try:
        if address == "local":
            ray.init(
                address="local",
                num_cpus=os.cpu_count() or 1,
                include_dashboard=False,
                _node_ip_address="127.0.0.1",
                **kwargs,
            )
        else:
            _check_reachable(address)
            ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise SpecError(f"cannot connect to Ray at {address}: {exc}") from None
    finally:
        if sigterm is not None:
            signal.signal(signal.SIGTERM, sigterm)


def run_jobs(
    fn: Callable[[J], R],
    jobs: Sequence[J],
    *,
    ray_address: str | None = None,
    num_cpus: float = 1,
    on_done: Callable[[int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_progress: Callable[[int, Any], None] | None = None,
) -> list[R]:
    """Run ``fn`` over ``jobs``: in process when ``ray_address`` is None, else as Ray
    tasks (``"local"`` starts embedded Ray). ``on_done(i)`` is called as job i finishes.
    When ``should_stop()`` turns true, unfinished jobs are cancelled and
    :class:`Cancelled` is raised (checked between jobs in process, twice a second on Ray).

    With ``on_progress``, ``fn`` is called as ``fn(job, report)``: a job calls
    ``report(value)`` as it goes, and ``on_progress(i, value)`` runs in the caller's
    thread (at once in process; on Ray the latest value of each job, twice a second).
    """
    stop = should_stop or getattr(_ambient, "stop", None) or (lambda: False)
    if ray_address is None:
        results = []
        with stop_when(stop):  # jobs that check_stop() see it between their steps
            for i, job in enumerate(jobs):
                if stop():
                    raise Cancelled("stopped before all jobs ran")
                if on_progress is not None:
                    results.append(fn(job, functools.partial(on_progress, i)))  # type: ignore[call-arg]
                else:
                    results.append(fn(job))
                if on_done:
                    on_done(i)
        return results

    ensure_ray(ray_address)  # first: it sets Ray's environment before the import
    import ray
    from ray.exceptions import RayTaskError

    board: Any = None
    refs: list[Any]
    if on_progress is not None:
        board = ray.remote(num_cpus=0)(_Board).remote()
        reporting: Any = ray.remote(num_cpus=num_cpus, max_retries=0)(_reporting)
        refs = [reporting.remote(fn, job, i, board) for i, job in enumerate(jobs)]
    else:
        remote: Any = ray.remote(num_cpus=num_cpus, max_retries=0)(fn)
        refs = [remote.remote(job) for job in jobs]  # submit all, then collect
    index = {ref: i for i, ref in enumerate(refs)}
    out: list[Any] = [None] * len(refs)
    pending = list(refs)
    try:
        while pending:
            if stop():
                raise Cancelled("stopped before all jobs ran")
            done, pending = ray.wait(pending, num_returns=1, timeout=0.5)
            if board is not None and on_progress is not None:  # before the results
                for i, value in ray.get(board.take.remote()):
                    on_progress(i, value)
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
    finally:
        if board is not None:
            ray.kill(board)
    return out


class _Board:
    """A Ray actor holding the latest progress value of each job until the driver takes
    them."""

    def __init__(self) -> None:
        self.latest: dict[int, Any] = {}

    def put(self, i: int, value: Any) -> None:
        self.latest[i] = value

    def take(self) -> list[tuple[int, Any]]:
        out, self.latest = sorted(self.latest.items()), {}
        return out


def _reporting(fn: Callable[..., R], job: Any, i: int, board: Any) -> R:
    """A job on Ray that reports progress to the board (without waiting, except for its
    last report, so that the driver sees the final value before the result)."""
    import ray

    last: list[Any] = []

    def report(value: Any) -> None:
        last[:] = [board.put.remote(i, value)]

    out = fn(job, report)
    if last:
        ray.get(last[0])
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


# ------------------------------------------------------ processes of embedded Ray
def embedded_ray_processes() -> list[Any]:
    """The processes embedded Ray started for this one (its descendants)."""
    import psutil

    return list(psutil.Process().children(recursive=True))


def record_embedded_ray(path: Path) -> bool:
    """Write the pids (with start times) and the session of this process's embedded Ray
    to ``path``, so that the next start can end them if this process is killed. False
    (nothing written) when Ray is not running here."""
    import ray

    if not ray.is_initialized():
        return False
    node = getattr(ray._private.worker, "_global_node", None)
    procs = []
    for p in embedded_ray_processes():
        try:
            procs.append({"pid": p.pid, "started": p.create_time()})
        except Exception:  # gone meanwhile
            continue
    data = {"session": getattr(node, "session_name", None), "processes": procs}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)
    return True


def kill_recorded_ray(path: Path) -> int:
    """End what a killed earlier process's embedded Ray left running (from the file
    :func:`record_embedded_ray` wrote): the recorded processes still alive with the same
    start time, and any process of the recorded session (agents ignore SIGTERM: SIGKILL).
    Returns how many were ended; removes the file."""
    import psutil

    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return 0
    victims: dict[int, Any] = {}
    for rec in data.get("processes", []):
        try:
            p = psutil.Process(int(rec["pid"]))
            if abs(p.create_time() - float(rec["started"])) < 0.01:
                victims[p.pid] = p
        except (psutil.Error, KeyError, TypeError, ValueError):
            continue
    session = data.get("session")
    if session:
        me = os.getuid()
        for p in psutil.process_iter(["cmdline", "uids"]):
            try:
                if p.info["uids"] and p.info["uids"].real != me:
                    continue
                if any(session in arg for arg in p.info["cmdline"] or ()):
                    victims[p.pid] = p
            except psutil.Error:
                continue
    victims.pop(os.getpid(), None)
    _kill(list(victims.values()))
    path.unlink(missing_ok=True)
    return len(victims)


def kill_embedded_ray() -> None:
    """SIGKILL what remains of this process's embedded Ray (after ``shutdown()``, or when
    a stop must end now): a stop leaves nothing behind."""
    _kill(embedded_ray_processes())


def _kill(procs: list[Any]) -> None:
    import psutil

    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            continue
    psutil.wait_procs(procs, timeout=5)
