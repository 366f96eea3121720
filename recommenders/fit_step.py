"""A derivation's fit step: the scenario's dynamics fitted from its own log.

:func:`fitted_dynamics` is a :data:`recommenders.derive.DynamicsFitter` that runs
``recaudit fit``'s fitter (:func:`simulator.fitting.run.fit_interactions`) on the log
against the derived catalog, under the calibrated choice model; the scenario gets the
selected family's dynamics and carries the fit section. With ``isolated`` the fit runs
in a child process (``python -m recommenders.fit_step DIR``: inputs and the section are
files in DIR, progress one line each on its stdout), polled every :data:`POLL_S`
seconds: each poll calls ``progress`` with the current phase, and an exception raised by
``progress`` (the service's cancellation) kills the child at once.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from simulator.errors import SpecError
from simulator.fitting.run import FitOptions
from simulator.specs import MNLChoice, NaturalDrift

from .derive import DerivedLog, DynamicsChoice, DynamicsFitter, parse_dynamics

#: seconds between two looks at a fit running in a child process
POLL_S = 0.2
_LOG, _ITEMS, _JOB, _OUT, _ERR = "log.parquet", "items.npy", "job.json", "fit.json", "stderr.txt"

Progress = Callable[[str], None]


@dataclass(frozen=True)
class FitInputs:
    """What one fit needs: the log (user, item, timestamp), the catalog (ids and unit
    features, row for row), the calibrated choice model and the options."""

    log: pd.DataFrame
    item_ids: tuple[str, ...]
    features: torch.Tensor
    choice: MNLChoice
    options: FitOptions
    threads: int | None = 1

    def fit(self, progress: Progress | None) -> dict[str, Any]:
        """The fit section, fitted in this process."""
        from simulator.fitting.likelihood import Items
        from simulator.fitting.run import fit_interactions
        from simulator.threads import torch_threads

        f = self.features
        with torch_threads(self.threads):
            section = fit_interactions(
                self.log,
                self.item_ids,
                Items(f, torch.zeros(f.shape[0], dtype=f.dtype)),
                self.choice,
                self.options,
                data={"log": "the derivation's log"},
                progress=progress,
            )
        out: dict[str, Any] = section.model_dump(mode="json")
        return out

    def write(self, d: Path) -> None:
        """The inputs as files for the child (parquet, .npy without pickles, JSON)."""
        self.log.to_parquet(d / _LOG, index=False)
        np.save(d / _ITEMS, self.features.numpy(), allow_pickle=False)
        job = {
            "item_ids": list(self.item_ids),
            "choice": self.choice.model_dump(mode="json"),
            "options": asdict(self.options),
            "threads": self.threads,
        }
        (d / _JOB).write_text(json.dumps(job), encoding="utf-8")

    @classmethod
    def read(cls, d: Path) -> FitInputs:
        job = json.loads((d / _JOB).read_text(encoding="utf-8"))
        options = {**job["options"], "candidates": tuple(job["options"]["candidates"])}
        return cls(
            log=pd.read_parquet(d / _LOG, engine="pyarrow"),
            item_ids=tuple(job["item_ids"]),
            features=torch.from_numpy(np.load(d / _ITEMS, allow_pickle=False)),
            choice=MNLChoice.model_validate(job["choice"]),
            options=FitOptions(**options),
            threads=job["threads"],
        )


def fitted_dynamics(
    options: FitOptions,
    *,
    progress: Progress | None = None,
    isolated: bool = False,
    threads: int | None = 1,
    workdir: tuple[Path, str] | None = None,
) -> DynamicsFitter:
    """A fitter that fits: see the module docstring. The fit's ``data`` names the
    exposure proxy; its slates have the scenario's slate size (``options.slate_size``).
    ``workdir`` (directory, name prefix) is where an isolated fit keeps its files while
    it runs (the service puts them where its start-up cleaning finds what a killed
    process left); the system's temporary directory by default."""

    def fitter(
        log: DerivedLog, items: torch.Tensor, users: torch.Tensor, choice: MNLChoice
    ) -> DynamicsChoice:
        raw = pd.DataFrame(
            {
                "user": np.asarray(log.user_ids, dtype=object)[log.user],
                "item": np.asarray(log.item_ids, dtype=object)[log.item],
                "timestamp": log.timestamp,
            }
        )
        inputs = FitInputs(raw, log.item_ids, items.float().contiguous(), choice, options, threads)
        fit = _in_child(inputs, progress, workdir) if isolated else inputs.fit(progress)
        dynamics = parse_dynamics(fit["dynamics"])
        return DynamicsChoice(
            dynamics=dynamics,
            drift=NaturalDrift(),
            fit=fit,
            summary={
                "by": "fitted",
                "fitted": True,
                "family": fit["family"],
                "vs_static": fit["vs_static"],
                "vs_static_interval": fit["vs_static_interval"],
                **dynamics.model_dump(mode="json"),
            },
        )

    return fitter


def _in_child(
    inputs: FitInputs, progress: Progress | None, workdir: tuple[Path, str] | None = None
) -> dict[str, Any]:
    from simulator.fitting.report import FitSection

    where, prefix = workdir if workdir is not None else (None, "recaudit-fit-")
    with tempfile.TemporaryDirectory(prefix=prefix, dir=where) as tmp:
        d = Path(tmp)
        inputs.write(d)
        root = str(Path(__file__).resolve().parents[1])
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
        }
        with open(d / _ERR, "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "recommenders.fit_step", str(d)],
                stdout=subprocess.PIPE,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=env,
                text=True,
            )
            lines: queue.Queue[str] = queue.Queue()
            reader = threading.Thread(target=_pump, args=(proc, lines), daemon=True)
            reader.start()
            phase = "starting"
            try:
                while True:
                    try:
                        rc: int | None = proc.wait(timeout=POLL_S)
                    except subprocess.TimeoutExpired:
                        rc = None
                    while not lines.empty():
                        phase = lines.get()
                    if progress is not None:
                        progress(phase)  # raises when the job is cancelled
                    if rc is not None:
                        break
            finally:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
                reader.join(1.0)
        if rc != 0:
            text = (d / _ERR).read_text(encoding="utf-8", errors="replace").strip()
            last = text.splitlines()[-1] if text else f"exit status {rc}"
            if rc == 2:
                raise SpecError(last)
            raise RuntimeError(f"the fit's process failed: {last}")
        section = FitSection.model_validate_json((d / _OUT).read_text(encoding="utf-8"))
    out: dict[str, Any] = section.model_dump(mode="json")
    return out


def _pump(proc: subprocess.Popen[str], lines: queue.Queue[str]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.strip():
            lines.put(line.strip())


def _orphan_watch(parent: int) -> None:
    while True:
        time.sleep(POLL_S)
        if os.getppid() != parent:
            os._exit(3)


def main(argv: list[str]) -> int:
    """The child: fit the inputs in ``argv[0]``; exit 2 with the message on bad input.
    It ends itself (exit 3) when its parent is gone: a fit outlives no service."""
    d = Path(argv[0])
    threading.Thread(target=_orphan_watch, args=(os.getppid(),), daemon=True).start()
    try:
        fit = FitInputs.read(d).fit(lambda msg: print(msg, flush=True))
    except SpecError as exc:
        print(str(exc), file=sys.stderr, flush=True)
        return 2
    (d / _OUT).write_text(json.dumps(fit), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
