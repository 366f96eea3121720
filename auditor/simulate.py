"""Drift simulations: a policy against its natural counterfactual, one job per seed.

A job is plain data (picklable, so it can travel to a Ray worker) and its function is
plain Python; :mod:`auditor.executor` decides where it runs. Workers return data frames;
the driver aggregates and writes.
"""

from __future__ import annotations

import math
import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Literal

import numpy as np
import pandas as pd
import psutil
import torch
from pydantic import Field

from recommenders.registry import make_policy
from recommenders.rl.policy import PolicyBundle
from simulator import metrics
from simulator.engine import SUMMARY_COLUMNS, RunResult, build_environment, run_arms
from simulator.errors import SpecError
from simulator.metric_registry import (
    EXTREME_THRESHOLD,
    REGISTRY,
    STATE_METRICS,
    STREAMED,
    RunMeasures,
    StepMeasures,
)
from simulator.specs import Frozen, ScenarioSpec

from .measure import axis_range

POLICY_ARM, NATURAL_ARM = "policy", "natural"


class SimJob(Frozen):
    """One seed of a drift simulation: ``policy`` and the scenario's natural policy, run
    in lockstep on the same users with common random numbers."""

    scenario: ScenarioSpec
    policy: str = Field(..., description="Policy kind (see `recaudit policies`).")
    users: int = Field(..., ge=1, description="Number of simulated users.")
    steps: int = Field(..., ge=1, description="Number of recommendation steps.")
    seed: int = Field(..., ge=0, description="Seed of this replicate.")
    device: Literal["cpu", "cuda"] = Field("cpu", description="Torch device.")
    record_full: bool = Field(
        False, description="Keep full trajectories (memory grows with steps)."
    )
    per_user: bool = Field(False, description="Return per-user final figures.")
    policy_config: dict[str, Any] | None = Field(
        None, description="A trained policy's JSON config."
    )
    policy_weights: bytes | None = Field(
        None, description="A trained policy's safetensors weights."
    )

    def bundle(self) -> PolicyBundle | None:
        if self.policy_config is None or self.policy_weights is None:
            return None
        return PolicyBundle(config=self.policy_config, weights=self.policy_weights)


@dataclass
class SimOutcome:
    seed: int
    summary: pd.DataFrame  # one row per arm and step
    final: dict[str, dict[str, float]]  # arm -> figure -> value
    per_user: pd.DataFrame | None = None
    trajectories: pd.DataFrame | None = None
    seconds: float = 0.0
    meta: dict[str, object] = field(default_factory=dict)


def estimate_bytes(job: SimJob, dim: int, catalog_size: int) -> int:
    """A generous estimate of the peak memory of one job, to refuse runs that cannot fit."""
    arms = 2
    k = job.scenario.slate_size
    per_user_arm = 4 * (6 * dim + 4 * k * dim + 6 * k + 16)
    scoring = 4 * 2 * min(job.users * catalog_size, 1 << 24)
    full = 0
    if job.record_full:
        full = arms * job.users * ((job.steps + 1) * (dim * 4 + 16) + job.steps * (k + 1) * 8)
        full *= 3  # the long-format table built from it
    return (
        job.users * per_user_arm * arms + scoring + full + (job.users * 64 if job.per_user else 0)
    )


def check_fits(jobs: list[SimJob], concurrent: int) -> None:
    """Refuse a size that would not fit in this machine's available memory."""
    if not jobs:
        return
    from simulator.catalog import build_catalog

    cat = build_catalog(jobs[0].scenario.catalog, jobs[0].scenario.env_seed)
    need = estimate_bytes(jobs[0], cat.dim, cat.size) * max(1, min(concurrent, len(jobs)))
    avail = psutil.virtual_memory().available
    if need > 0.8 * avail:
        raise SpecError(
            f"this run needs about {need / 2**30:.1f} GiB but {avail / 2**30:.1f} GiB is available; "
            "use fewer --users or --seeds, or drop --full"
        )


def final_figures(result: RunResult, arm: str) -> dict[str, float]:
    """The registry's metrics that a run's summaries and states give
    (:data:`~simulator.metric_registry.STATE_METRICS`), computed by the registry's own
    functions, in report order; the induced shift is against the run's reference arm."""
    rec = result.arms[arm]
    assert rec.final is not None and rec.clicks is not None
    ref = result.arms[result.reference].final if result.reference else rec.final
    assert ref is not None
    lo, hi = axis_range(result.scenario.space)
    at_end = StepMeasures(
        u=rec.final,
        z=metrics.polarity(rec.final, result.axis),
        lo=lo,
        hi=hi,
        extreme_threshold=EXTREME_THRESHOLD,
    )
    series = {k: list(rec.summaries[k]) for k in STREAMED}
    # the stepped metrics' final value is the step function at the end (their series's last)
    series.update({m.name: [m.step(at_end)] for m in REGISTRY.values() if m.step is not None})
    empty = torch.zeros(0, device=rec.final.device)
    measures = RunMeasures(
        steps=result.steps,
        series=series,
        u0=result.initial,
        u=rec.final,
        u_natural=ref,
        axis=result.axis,
        clicks=rec.clicks,
        exposure=empty,
        consumed=empty.bool(),
        pairs=empty.long(),
        topic_counts=empty,
        expected_actual=empty,
        expected_natural=empty,
    )
    return {name: REGISTRY[name].final(measures) for name in STATE_METRICS}


def run_simulation(job: SimJob, progress: Callable[[int], None] | None = None) -> SimOutcome:
    """Run one seed. Plain Python: the executor adds ``.remote`` at the edge."""
    import time

    start = time.perf_counter()
    env = build_environment(job.scenario, job.device)
    arms = {
        POLICY_ARM: make_policy(job.policy, job.bundle()),
        NATURAL_ARM: make_policy(job.scenario.natural_policy),
    }
    result = run_arms(
        env,
        arms,
        users=job.users,
        steps=job.steps,
        seed=job.seed,
        reference=NATURAL_ARM,
        record_full=job.record_full,
        progress=progress,
    )
    frames = []
    for arm, rec in result.arms.items():
        df = pd.DataFrame(rec.summaries)
        df.insert(0, "step", np.arange(1, job.steps + 1))
        df.insert(0, "arm", arm)
        df.insert(0, "seed", job.seed)
        frames.append(df)
    summary = pd.concat(frames, ignore_index=True)
    final = {arm: final_figures(result, arm) for arm in result.arms}
    out = SimOutcome(seed=job.seed, summary=summary, final=final)
    if job.per_user:
        out.per_user = per_user_frame(result)
    if job.record_full:
        out.trajectories = trajectory_frame(result)
    out.seconds = time.perf_counter() - start
    return out


def per_user_frame(result: RunResult) -> pd.DataFrame:
    z0 = metrics.polarity(result.initial, result.axis).cpu().numpy()
    frames = []
    ref = result.arms[result.reference].final if result.reference else None
    for arm, rec in result.arms.items():
        assert rec.final is not None and rec.clicks is not None
        data = {
            "seed": result.seed,
            "arm": arm,
            "user": np.arange(result.users),
            "user_id": list(result.user_ids),
            "clicks": rec.clicks.cpu().numpy(),
            "shift": (rec.final - result.initial).norm(dim=1).cpu().numpy(),
            "induced_shift": (rec.final - (ref if ref is not None else rec.final))
            .norm(dim=1)
            .cpu()
            .numpy(),
            "polarity_initial": z0,
            "polarity_final": metrics.polarity(rec.final, result.axis).cpu().numpy(),
        }
        if result.types is not None:
            data["user_type"] = result.types.cpu().numpy()
        frames.append(pd.DataFrame(data))
    return pd.concat(frames, ignore_index=True)


def trajectory_frame(result: RunResult) -> pd.DataFrame:
    """Long format: one row per (arm, step, user) with preferences p0..p{d-1} after the
    step and the item consumed in it (-1: none; step 0 is the initial state), each user
    and item also named by its id (``user_id``, ``item_id``; null where no item)."""
    frames = []
    for arm, rec in result.arms.items():
        assert rec.preferences is not None and rec.choices is not None
        prefs = torch.stack(rec.preferences).numpy()  # [T+1, B, d]
        t1, b, d = prefs.shape
        items = np.concatenate([np.full((1, b), -1), torch.stack(rec.choices).numpy()])
        items = items.reshape(-1)
        users = np.tile(np.arange(b), t1)
        df = pd.DataFrame(prefs.reshape(t1 * b, d), columns=[f"p{i}" for i in range(d)])
        # categorical: one copy of each id string; code -1 (no item) is null
        df.insert(0, "item_id", pd.Categorical.from_codes(items, categories=result.item_ids))
        df.insert(0, "item", items)
        df.insert(0, "user_id", pd.Categorical.from_codes(users, categories=result.user_ids))
        df.insert(0, "user", users)
        df.insert(0, "step", np.repeat(np.arange(t1), b))
        df.insert(0, "arm", arm)
        df.insert(0, "seed", result.seed)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def aggregate(outcomes: list[SimOutcome]) -> dict[str, dict[str, dict[str, object]]]:
    """Per arm and figure: mean, sample sd and the per-seed values (seeds are the
    replicates; users within a seed are not independent)."""
    arms = outcomes[0].final.keys()
    agg: dict[str, dict[str, dict[str, object]]] = {}
    for arm in arms:
        agg[arm] = {}
        for fig in outcomes[0].final[arm]:
            vals = [o.final[arm][fig] for o in outcomes]
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
    "SUMMARY_COLUMNS",
    "SimJob",
    "SimOutcome",
    "aggregate",
    "check_fits",
    "run_simulation",
    "versions",
]
