"""One arm of one replicate: run a policy on the replicate's users and measure it.

An :class:`ArmJob` is plain data (picklable, so it can travel to a Ray worker) and
:func:`measure_arms` is plain Python; :mod:`auditor.executor` decides where it runs.
Arms of the same replicate run in separate tasks yet stay paired: the engine draws every
step's random numbers from the replicate's seed with shapes that depend on the scenario
only (common random numbers), so the natural counterfactual each arm runs beside is the
natural arm of that replicate, with exactly the users and noise the audited arm saw (one
job per replicate measures it as the natural arm too). Workers return data; the driver
compares arms.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from simulator import metrics
from simulator.engine import (
    ArmRecord,
    Environment,
    RunResult,
    StepView,
    build_environment,
    run_arms,
)
from simulator.metric_registry import (
    EXTREME_THRESHOLD,
    REGISTRY,
    STEP_SERIES,
    STREAMED,
    RunMeasures,
    StepMeasures,
)
from simulator.policy import Policy
from simulator.rng import Streams
from simulator.specs import ScenarioSpec

from .executor import check_stop

#: per-step series of an arm (the curves), from the metric registry
STEP_METRICS = STEP_SERIES
_COUNTERFACTUAL = "\x00natural-counterfactual"  # an arm name no audit label can take
HIST_BINS = 40
JACCARD_USERS = 4096  # consumed-set similarity is measured on (at most) this many users
SNAPSHOT_FLOATS = 2_000_000  # budget for kept preference snapshots per task (8 MB)


def axis_range(space: str) -> tuple[float, float]:
    """Range of positions on the polarity axis used for binned indices and histograms."""
    return (0.0, 1.0) if space == "unit_interval" else (-1.0, 1.0)


def checkpoints(steps: int, users: int, dim: int) -> list[int]:
    """Steps (0 = initial) at which preferences are kept: every step when they fit the
    snapshot budget, otherwise evenly spaced (always with 0 and the last step)."""
    k = max(11, SNAPSHOT_FLOATS // max(1, users * dim))
    if k >= steps + 1:
        return list(range(steps + 1))
    return sorted({round(i * steps / (k - 1)) for i in range(k)})


@dataclass(frozen=True)
class ArmJob:
    """One arm of one replicate of an audit (with ``counterfactual_label``, the natural
    arm too)."""

    scenario: ScenarioSpec
    label: str
    factory: Callable[[], Policy]
    users: int
    steps: int
    seed: int
    replicate: int
    checkpoints: tuple[int, ...]
    extreme_threshold: float = EXTREME_THRESHOLD
    device: str = "cpu"
    #: the natural counterfactual's policy, run in lockstep (common random numbers) to
    #: score this arm's slates under the preferences its users would have had; None for
    #: the natural arm itself (its engagement is all unmediated)
    counterfactual: Callable[[], Policy] | None = None
    #: also measure the counterfactual, as the arm of this label (the natural arm of the
    #: same replicate: the same users and random numbers, so the same run), at no extra
    #: run: :func:`measure_arms` returns its outcome second
    counterfactual_label: str | None = None
    #: keep the item each user consumed at every step (trajectory exports; with every
    #: step among the checkpoints, the snapshots are the preference trajectory)
    record_choices: bool = False
    #: return the users' and the catalog's string ids (exports name them by these)
    keep_ids: bool = False

    def __post_init__(self) -> None:
        if self.counterfactual_label is not None and self.counterfactual is None:
            raise ValueError("counterfactual_label needs a counterfactual")


@dataclass
class ArmOutcome:
    label: str
    replicate: int
    seed: int
    #: STEP_METRICS -> T values (after steps 1..T), and the engine's per-step
    #: ``induced_shift`` against the counterfactual (0 without one)
    per_step: dict[str, list[float]]
    final: dict[str, float]  # end-of-run figures measured inside the task
    per_user: dict[str, np.ndarray]  # per-user values of the USER_METRICS measured here, [B]
    snapshots: np.ndarray  # [K, B, d] float32 preferences at ``checkpoints``
    histograms: np.ndarray  # [K, HIST_BINS] counts of positions on the polarity axis
    #: [3, B] expected clicks per user summed over steps, under the actual preferences,
    #: under the natural counterfactual's (equal for the natural arm) and under the
    #: initial preferences
    mediation: np.ndarray | None = None
    types: np.ndarray | None = None  # [B] user types of typed populations
    seconds: float = 0.0
    boundary: dict[str, Any] | None = None  # the policy's boundary() (ids, cold start)
    axis: np.ndarray | None = None  # [d] the run's unit polarity axis
    choices: np.ndarray | None = None  # [T, B] item consumed at each step or -1 (record_choices)
    user_ids: tuple[str, ...] = ()  # user b is user_ids[b] (keep_ids)
    item_ids: tuple[str, ...] = ()  # item i is item_ids[i] (keep_ids)


class _Mediation:
    """Expected clicks of the arm's slates under the users' actual preferences and under
    their natural-counterfactual preferences (the natural arm's state at the same step of
    the same replicate), summed over steps per user."""

    def __init__(self, job: ArmJob, env: Environment, has_counterfactual: bool) -> None:
        self.env = env
        self.has_counterfactual = has_counterfactual
        self.actual = torch.zeros(job.users, dtype=torch.float64, device=env.device)
        self.natural = torch.zeros(job.users, dtype=torch.float64, device=env.device)
        self.initial = torch.zeros(job.users, dtype=torch.float64, device=env.device)
        self.u_nat: tuple[int, torch.Tensor] | None = None  # (step, counterfactual's after it)

    def clicks(self, u: torch.Tensor, slate: torch.Tensor) -> torch.Tensor:
        cat = self.env.catalog
        probs = self.env.choice.probabilities(u, cat.features[slate], cat.appeal[slate])
        return 1.0 - probs[:, -1].double()

    def arm(self, v: StepView) -> None:
        """The arm's step t (seen before the counterfactual's step t)."""
        # the engine's choice probabilities under the actual and the initial preferences
        p = 1.0 - v.p_none.double()
        self.actual += p
        self.initial += 1.0 - v.p_none_initial.double()
        if self.has_counterfactual:
            if self.u_nat is None:
                u_nat = v.u0
            else:
                t_nat, u_nat = self.u_nat
                assert t_nat == v.t - 1, "the counterfactual must step after the arm"
            self.natural += self.clicks(u_nat, v.slate)
        else:
            self.natural += p

    def counterfactual(self, v: StepView) -> None:
        self.u_nat = (v.t, v.u)


class _Meter:
    """Measurements streamed from the engine's observer hook."""

    def __init__(self, job: ArmJob, n_items: int, topics: torch.Tensor, dev: torch.device):
        self.job = job
        self.lo, self.hi = axis_range(job.scenario.space)
        self.step_metrics = [m for m in REGISTRY.values() if m.step is not None]
        self.per_step: dict[str, list[float]] = {m.name: [] for m in self.step_metrics}
        self.snap_at = set(job.checkpoints)
        self.snapshots: list[torch.Tensor] = []
        self.exposure = torch.zeros(n_items, dtype=torch.float64, device=dev)
        self.topics = topics
        n_topics = int(topics.max()) + 1 if topics.numel() else 1
        self.jac_users = min(job.users, JACCARD_USERS)
        self.consumed = torch.zeros(self.jac_users, n_items, dtype=torch.bool, device=dev)
        self.topic_counts = torch.zeros(job.users, n_topics, dtype=torch.float64, device=dev)
        self.axis: torch.Tensor | None = None
        self.choices: list[torch.Tensor] | None = [] if job.record_choices else None

    def __call__(self, v: StepView) -> None:
        if v.t == 0:
            self.axis = v.axis
            if 0 in self.snap_at:
                self.snapshots.append(v.u0.float().cpu())
        sm = StepMeasures(
            u=v.u,
            z=metrics.polarity(v.u, v.axis),
            lo=self.lo,
            hi=self.hi,
            extreme_threshold=self.job.extreme_threshold,
        )
        for m in self.step_metrics:
            assert m.step is not None
            self.per_step[m.name].append(m.step(sm))
        if v.t + 1 in self.snap_at:
            self.snapshots.append(v.u.float().cpu())
        self.exposure += torch.bincount(v.slate.flatten(), minlength=self.exposure.numel())
        clicked = v.item >= 0
        rows = torch.nonzero(clicked).squeeze(1)
        items = v.item[rows]
        self.topic_counts[rows, self.topics[items]] += 1.0
        keep = rows < self.jac_users
        self.consumed[rows[keep], items[keep]] = True
        if self.choices is not None:
            self.choices.append(v.item.cpu())


def _boundary(policy: Policy) -> dict[str, Any] | None:
    """What a policy that crosses the boundary by ids (uploaded models, remote endpoints)
    states about it: its ``boundary()``, if it has one."""
    state = getattr(policy, "boundary", None)
    return dict(state()) if callable(state) else None


def run_arm(job: ArmJob, progress: Callable[[int], None] | None = None) -> ArmOutcome:
    """Run one arm of one replicate and measure it. Plain Python: the executor adds
    ``.remote``. ``progress(steps_done)`` is called after every step."""
    return measure_arms(job, progress)[0]


@dataclass
class _Measured:
    """One measured arm of a run: its label, policy and streamed meters."""

    label: str
    policy: Policy
    meter: _Meter
    mediation: _Mediation


def measure_arms(job: ArmJob, progress: Callable[[int], None] | None = None) -> list[ArmOutcome]:
    """Run one arm of one replicate (beside its counterfactual, if any) and measure it;
    with ``job.counterfactual_label`` the counterfactual is measured too, its outcome
    second. Plain Python: the executor adds ``.remote``."""
    start = time.perf_counter()
    env = build_environment(job.scenario, job.device)
    cf = job.counterfactual is not None

    def measured(label: str, policy: Policy, has_counterfactual: bool) -> _Measured:
        meter = _Meter(job, env.catalog.size, env.catalog.topic, env.device)
        return _Measured(label, policy, meter, _Mediation(job, env, has_counterfactual))

    arm = measured(job.label, job.factory(), cf)
    policies = {job.label: arm.policy}
    natural: _Measured | None = None
    if job.counterfactual is not None:
        policies[_COUNTERFACTUAL] = job.counterfactual()  # steps after the arm
        if job.counterfactual_label is not None:
            natural = measured(job.counterfactual_label, policies[_COUNTERFACTUAL], False)

    def observe(v: StepView) -> None:
        if v.arm == job.label:
            arm.meter(v)
            arm.mediation.arm(v)
            return
        arm.mediation.counterfactual(v)
        if natural is not None:
            natural.meter(v)
            natural.mediation.arm(v)

    result = run_arms(
        env,
        policies,
        users=job.users,
        steps=job.steps,
        seed=job.seed,
        reference=_COUNTERFACTUAL if cf else None,
        observe=observe,
        progress=lambda t: _step_done(t, progress),
    )
    ref = result.arms[_COUNTERFACTUAL] if cf else result.arms[job.label]
    outcomes = [_outcome(job, arm, result, result.arms[job.label], ref)]
    if natural is not None:
        outcomes.append(_outcome(job, natural, result, ref, ref))
    for o in outcomes:
        o.seconds = time.perf_counter() - start
    return outcomes


def _outcome(
    job: ArmJob, arm: _Measured, result: RunResult, rec: ArmRecord, natural: ArmRecord
) -> ArmOutcome:
    """The registry's figures of one measured arm, from its record, its meters and its
    natural counterfactual's final preferences (its own for the natural arm)."""
    meter, mediation = arm.meter, arm.mediation
    assert rec.final is not None and rec.clicks is not None and natural.final is not None
    per_step = {k: list(rec.summaries[k]) for k in STREAMED}
    per_step.update(meter.per_step)
    per_step = {m: per_step[m] for m in STEP_METRICS}
    per_step["induced_shift"] = list(rec.summaries["induced_shift"])
    gen = Streams(job.seed).generator("audit-pairs")
    perm = torch.randperm(meter.jac_users, generator=gen).to(rec.final.device)
    half = meter.jac_users // 2
    measures = RunMeasures(
        steps=job.steps,
        series=per_step,
        u0=result.initial,
        u=rec.final,
        u_natural=natural.final,
        axis=result.axis,
        clicks=rec.clicks,
        exposure=meter.exposure,
        consumed=meter.consumed,
        pairs=torch.stack([perm[:half], perm[half : 2 * half]], dim=1),
        topic_counts=meter.topic_counts,
        expected_actual=mediation.actual,
        expected_natural=mediation.natural,
    )
    final = {name: m.final(measures) for name, m in REGISTRY.items()}
    per_user = {
        name: np.asarray(m.user(measures), dtype=np.float64)
        for name, m in REGISTRY.items()
        if m.user is not None
    }
    snaps = torch.stack(meter.snapshots)  # [K, B, d]
    lo, hi = axis_range(job.scenario.space)
    z = (snaps @ (result.axis / result.axis.norm()).float().cpu()).double().clamp(lo, hi)
    idx = ((z - lo) / (hi - lo) * HIST_BINS).long().clamp(0, HIST_BINS - 1)
    hist = torch.stack([torch.bincount(row, minlength=HIST_BINS) for row in idx])
    return ArmOutcome(
        label=arm.label,
        replicate=job.replicate,
        seed=job.seed,
        per_step=per_step,
        final=final,
        per_user=per_user,
        snapshots=snaps.numpy(),
        histograms=hist.numpy(),
        mediation=torch.stack([mediation.actual, mediation.natural, mediation.initial])
        .cpu()
        .numpy(),
        types=None if result.types is None else result.types.cpu().numpy(),
        boundary=_boundary(arm.policy),
        axis=result.axis.cpu().numpy(),
        choices=None if meter.choices is None else torch.stack(meter.choices).numpy(),
        user_ids=result.user_ids if job.keep_ids else (),
        item_ids=result.item_ids if job.keep_ids else (),
    )


def _step_done(t: int, progress: Callable[[int], None] | None) -> None:
    check_stop()  # a cancel stops the run within a step
    if progress is not None:
        progress(t)
