"""The thread and wait policy for torch: the one place that decides it.

Two rules:

- **Training runs on ``TRAIN_THREADS`` (1) torch threads everywhere**: in this process,
  in embedded-Ray workers and on a cluster. A reduction split over a different number of
  threads adds its terms in a different order, so the same configuration trained with 1
  and with 2 threads gives different weights; fixing the count makes a trained learner
  independent of the backend and the machine, so the trained-policy cache's fingerprint
  (scenario, kind, configuration) is all that decides it. Independent learners train in
  parallel as Ray tasks instead.
- **Idle OpenMP threads sleep instead of spinning** (``OMP_WAIT_POLICY=PASSIVE``); the
  thread count stays torch's default (one per core) in the driver, and Ray gives each
  task as many threads as it has CPUs (one). With the default active wait, every parallel region on a
  2-core machine spins on a descheduled thread whenever another process holds a core: a
  10,000-user simulator run took about 2 s quiet and 29-39 s next to a busy process.
  The OpenMP runtime reads the variable when torch loads it, so :func:`configure_process`
  runs at every entry point (``recaudit``, ``python -m service``, the benchmarks) before
  torch is imported; Ray workers inherit the variable from the driver that starts them.
  A value already in the environment wins (``OMP_WAIT_POLICY=ACTIVE`` restores spinning).

Simulation results do not depend on the thread count (every backend gives the same
numbers; tests check it), so only training needs the fixed count.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")

#: torch threads while training (in process and in Ray workers alike)
TRAIN_THREADS = 1
WAIT_POLICY = "PASSIVE"


def available_cores() -> int:
    """Cores this process may run on (its affinity mask; ``os.cpu_count()`` elsewhere)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def configure_process() -> None:
    """Apply the wait policy to this process and to the Ray workers it starts. Call before
    torch is imported: the OpenMP runtime reads the variable once, when torch loads it."""
    os.environ.setdefault("OMP_WAIT_POLICY", WAIT_POLICY)


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch on ``threads`` intra-op threads for the block (None: unchanged), restored
    afterwards."""
    import torch

    old = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(max(1, int(threads)))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def training_threads() -> contextlib.AbstractContextManager[None]:
    """The fixed thread count of training (:data:`TRAIN_THREADS`), for the block."""
    return torch_threads(TRAIN_THREADS)


def trains_with_fixed_threads(fn: Callable[P, R]) -> Callable[P, R]:
    """Decorator: ``fn`` runs under :func:`training_threads`."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with training_threads():
            return fn(*args, **kwargs)

    return wrapper
