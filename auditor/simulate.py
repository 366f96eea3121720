"""Drift simulations: a policy against its natural counterfactual, one replicate per seed.

A simulation is an audit with the natural reference and no criteria: its jobs are the
audit's :class:`~auditor.measure.ArmJob` s, run by :func:`~auditor.measure.run_arm` and
measured by the metric registry, one :class:`~auditor.measure.ArmOutcome` per arm and
seed. The driver aggregates them and builds the exports (summaries, per-user figures,
trajectories) from them.
"""

from __future__ import annotations

import math
import platform
from collections.abc import Callable, Sequence
from importlib import metadata

import numpy as np
import pandas as pd
import psutil
import torch

from simulator import metrics
from simulator.engine import SUMMARY_COLUMNS
from simulator.errors import SpecError
from simulator.policy import Policy
from simulator.specs import ScenarioSpec

from .budget import catalog_shape
from .measure import JACCARD_USERS, ArmJob, ArmOutcome, measure_arms
from .plan import BuiltinPolicy

POLICY_ARM, NATURAL_ARM = "policy", "natural"


def simulation_jobs(
    scenario: ScenarioSpec,
    policy: Callable[[], Policy],
    *,
    users: int,
    steps: int,
    seeds: Sequence[int],
    device: str = "cpu",
    full: bool = False,
    keep_ids: bool = False,
    measure_natural: bool = True,
) -> list[ArmJob]:
    """A simulation as the audit with the natural reference and no criteria runs it: per
    seed, one :class:`~auditor.measure.ArmJob`, the ``policy`` arm beside the natural
    counterfactual (lockstep, common random numbers), the counterfactual measured as the
    natural arm (:func:`~auditor.measure.measure_arms` returns both outcomes). ``full``
    keeps every step's preferences and choices (the trajectory export); ``keep_ids`` the
    users' and items' ids (the exports); without ``measure_natural`` only the policy arm
    is measured (its figures are the same)."""
    natural = BuiltinPolicy(scenario.natural_policy)
    kept = tuple(range(steps + 1)) if full else (0, steps)
    return [
        ArmJob(
            scenario=scenario,
            label=POLICY_ARM,
            factory=policy,
            users=users,
            steps=steps,
            seed=seed,
            replicate=r,
            checkpoints=kept,
            device=device,
            counterfactual=natural,
            counterfactual_label=NATURAL_ARM if measure_natural else None,
            record_choices=full,
            keep_ids=keep_ids,
        )
        for r, seed in enumerate(seeds)
    ]


def run_simulation_jobs(
    jobs: list[ArmJob],
    ray_address: str | None = None,
    progress: Callable[[int], None] | None = None,
    on_done: Callable[[int], None] | None = None,
) -> list[ArmOutcome]:
    """Run :func:`simulation_jobs` on the executor: every seed's outcomes, policy arm
    then natural arm, in seed order. ``progress(steps_done)`` after every step (in
    process only), ``on_done(i)`` when job ``i`` finishes."""
    from functools import partial

    from .executor import run_jobs

    fn = measure_arms if progress is None else partial(measure_arms, progress=progress)
    done = run_jobs(fn, jobs, ray_address=ray_address, on_done=on_done)
    return [o for outs in done for o in outs]


def estimate_bytes(job: ArmJob) -> int:
    """A generous estimate of the peak memory of one job (:func:`~auditor.measure.run_arm`),
    to refuse runs that cannot fit: the arms' states and step tensors, and per measured
    arm the per-step meters (consumed items, topic counts, exposure, mediation), the kept
    snapshots and choices, and the per-user results."""
    items, dim, topics = catalog_shape(job.scenario.catalog)
    arms = 1 if job.counterfactual is None else 2
    measured = 2 if job.counterfactual_label is not None else 1
    k, b = job.scenario.slate_size, job.users
    per_user_arm = 4 * (6 * dim + 4 * k * dim + 6 * k + 16)
    scoring = 4 * 2 * min(b * items, 1 << 24)
    meters = (
        min(b, JACCARD_USERS) * items  # consumed-item sets (bool)
        + 8 * b * (topics + 3 + 8)  # topic counts, mediation sums, per-user results
        + 8 * items  # exposure
        + 4 * b * k * dim * 2  # the mediation's slate scores
    )
    kept = len(job.checkpoints) * b * (dim * 4) + (job.steps * b * 8 if job.record_choices else 0)
    if job.record_choices:
        kept *= 4  # the long-format table built from it
    return b * per_user_arm * arms + scoring + (meters + kept) * measured


def check_fits(jobs: list[ArmJob], concurrent: int) -> None:
    """Refuse a size that would not fit in this machine's available memory."""
    if not jobs:
        return
    sizes = sorted((estimate_bytes(j) for j in jobs), reverse=True)
    need = sum(sizes[: max(1, min(concurrent, len(jobs)))])
    avail = psutil.virtual_memory().available
    if need > 0.8 * avail:
        raise SpecError(
            f"this run needs about {need / 2**30:.1f} GiB but {avail / 2**30:.1f} GiB is available; "
            "use fewer --users or --seeds, or drop --full"
        )


def summary_frame(outcomes: list[ArmOutcome]) -> pd.DataFrame:
    """One row per seed, arm and step: the engine's summary columns (``induced_shift``
    against the natural counterfactual), then the arm's other per-step series."""
    frames = []
    for o in outcomes:
        cols = [*SUMMARY_COLUMNS, *(m for m in o.per_step if m not in SUMMARY_COLUMNS)]
        df = pd.DataFrame({m: o.per_step[m] for m in cols})
        df.insert(0, "step", np.arange(1, len(df) + 1))
        df.insert(0, "arm", o.label)
        df.insert(0, "seed", o.seed)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def per_user_frame(outcomes: list[ArmOutcome]) -> pd.DataFrame:
    """One row per seed, arm and user: clicks, shift, induced shift (the registry's
    per-user values), polarity at the start and at the end, the user type if any. Needs
    jobs with ``keep_ids``."""
    frames = []
    for o in outcomes:
        assert o.axis is not None and o.user_ids
        axis = torch.from_numpy(o.axis)
        users = o.snapshots.shape[1]
        data = {
            "seed": o.seed,
            "arm": o.label,
            "user": np.arange(users),
            "user_id": list(o.user_ids),
            "clicks": o.per_user["cumulative_clicks"],
            "shift": o.per_user["shift"],
            "induced_shift": o.per_user["induced_shift"],
            "polarity_initial": metrics.polarity(torch.from_numpy(o.snapshots[0]), axis).numpy(),
            "polarity_final": metrics.polarity(torch.from_numpy(o.snapshots[-1]), axis).numpy(),
        }
        if o.types is not None:
            data["user_type"] = o.types
        frames.append(pd.DataFrame(data))
    return pd.concat(frames, ignore_index=True)


def trajectory_frame(outcomes: list[ArmOutcome]) -> pd.DataFrame:
    """Long format: one row per (seed, arm, step, user) with preferences p0..p{d-1} after
    the step and the item consumed in it (-1: none; step 0 is the initial state), each
    user and item also named by its id (``user_id``, ``item_id``; null where no item).
    Needs jobs made with ``full`` and ``keep_ids``."""
    frames = []
    for o in outcomes:
        assert o.choices is not None and o.user_ids
        prefs = o.snapshots  # [T+1, B, d]: every step is a checkpoint
        t1, b, d = prefs.shape
        assert o.choices.shape == (t1 - 1, b), "a full run keeps every step"
        items = np.concatenate([np.full((1, b), -1), o.choices]).reshape(-1)
        users = np.tile(np.arange(b), t1)
        df = pd.DataFrame(prefs.reshape(t1 * b, d), columns=[f"p{i}" for i in range(d)])
        # categorical: one copy of each id string; code -1 (no item) is null
        df.insert(0, "item_id", pd.Categorical.from_codes(items, categories=o.item_ids))
        df.insert(0, "item", items)
        df.insert(0, "user_id", pd.Categorical.from_codes(users, categories=o.user_ids))
        df.insert(0, "user", users)
        df.insert(0, "step", np.repeat(np.arange(t1), b))
        df.insert(0, "arm", o.label)
        df.insert(0, "seed", o.seed)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def aggregate(outcomes: list[ArmOutcome]) -> dict[str, dict[str, dict[str, object]]]:
    """Per arm and figure: mean, sample sd and the per-seed values (seeds are the
    replicates; users within a seed are not independent)."""
    by_arm: dict[str, list[ArmOutcome]] = {}
    for o in sorted(outcomes, key=lambda o: o.replicate):
        by_arm.setdefault(o.label, []).append(o)
    agg: dict[str, dict[str, dict[str, object]]] = {}
    for arm, outs in by_arm.items():
        agg[arm] = {}
        for fig in outs[0].final:
            vals = [o.final[fig] for o in outs]
            finite = [v for v in vals if math.isfinite(v)]
            mean = float(np.mean(finite)) if finite else float("nan")
            sd = float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0
            agg[arm][fig] = {"mean": mean, "sd": sd, "per_seed": vals}
    return agg


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("recaudit", "torch", "numpy", "pandas", "ray", "mlflow", "recbole"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "missing"
    return out


__all__ = [
    "NATURAL_ARM",
    "POLICY_ARM",
    "aggregate",
    "check_fits",
    "estimate_bytes",
    "per_user_frame",
    "run_simulation_jobs",
    "simulation_jobs",
    "summary_frame",
    "trajectory_frame",
    "versions",
]
