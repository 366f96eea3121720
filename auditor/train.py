"""Training learners, sweeps on Ray, and the trained-policy cache.

A training job is plain data and its function plain Python (it runs in a Ray worker for
sweeps). The driver logs every run to MLflow and registers the policy; later simulations
and audits of the same scenario and configuration find it by its fingerprint instead of
training again.
"""

from __future__ import annotations

import functools
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError

from recommenders.registry import get_kind, make_policy
from recommenders.rl.policy import LearnedPolicy, PolicyBundle
from recommenders.rl.ppo import PPOConfig, train_ppo
from simulator.errors import SpecError
from simulator.specs import Frozen, ScenarioSpec, fingerprint

from . import tracking
from .executor import check_stop, run_jobs
from .measure import run_arm
from .simulate import simulation_jobs

EVAL_SEED_OFFSET = 1_000_000


class TrainJob(Frozen):
    kind: str = Field(..., description="A trainable policy kind (see `recaudit policies`).")
    scenario: ScenarioSpec
    config: PPOConfig
    device: Literal["cpu", "cuda"] = "cpu"
    eval_users: int = Field(2000, ge=1, description="Users in the evaluation run after training.")

    def fingerprint(self) -> str:
        """Identifies the trained policy: scenario contents, kind and full config."""
        return fingerprint(
            {
                "kind": self.kind,
                "scenario": self.scenario.fingerprint(),
                "config": self.config.model_dump(mode="json"),
            }
        )


@dataclass
class TrainOutcome:
    job: TrainJob
    bundle: PolicyBundle
    history: list[dict[str, float]]
    seconds: float
    env_steps: int
    evaluation: dict[str, float] = field(default_factory=dict)

    @property
    def env_steps_per_s(self) -> float:
        return self.env_steps / self.seconds if self.seconds else 0.0


def default_config(kind: str, **overrides: Any) -> PPOConfig:
    k = get_kind(kind)
    if not k.trainable:
        raise SpecError(
            f"policy {kind!r} needs no training; trainable kinds: {', '.join(trainable_kinds())}"
        )
    base: dict[str, Any] = {
        "gamma": k.gamma,
        "penalty": k.penalty,
        "penalty_weight": k.penalty_weight,
    }
    base.update({key: v for key, v in overrides.items() if v is not None})
    try:
        return PPOConfig(**base)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise SpecError(f"invalid {'.'.join(map(str, first['loc']))}: {first['msg']}") from None


def trainable_kinds() -> list[str]:
    from recommenders.registry import POLICIES

    return [name for name, k in POLICIES.items() if k.trainable]


def evaluate(
    bundle: PolicyBundle, scenario: ScenarioSpec, users: int, seed: int, device: str = "cpu"
) -> dict[str, float]:
    """The trained policy (greedy) against the natural counterfactual on fresh users:
    ``final/<metric>`` for every metric ``recaudit simulate`` reports, measured by the
    same job and function (:func:`auditor.simulate.simulation_jobs`,
    :func:`auditor.measure.run_arm`: the policy arm's outcome)."""
    steps = int(bundle.config.get("horizon") or scenario.default_steps)
    policy = functools.partial(LearnedPolicy, bundle)
    [job] = simulation_jobs(
        scenario,
        policy,
        users=users,
        steps=steps,
        seeds=[seed],
        device=device,
        measure_natural=False,
    )
    return {f"final/{name}": value for name, value in run_arm(job).final.items()}


def _after_iteration(report: Callable[[int], None] | None, it: int, _row: object) -> None:
    check_stop()  # a cancel stops training within an iteration
    if report is not None:
        report(it + 1)


def run_training(job: TrainJob, report: Callable[[int], None] | None = None) -> TrainOutcome:
    """Train one learner and evaluate it. Plain Python: runs in process or on Ray.
    ``report(iterations_done)`` is called after every iteration."""
    result = train_ppo(
        job.scenario,
        job.config,
        kind=job.kind,
        natural=lambda: make_policy(job.scenario.natural_policy),
        device=job.device,
        on_iteration=functools.partial(_after_iteration, report),
    )
    ev = evaluate(
        result.bundle, job.scenario, job.eval_users, job.config.seed + EVAL_SEED_OFFSET, job.device
    )
    return TrainOutcome(
        job=job,
        bundle=result.bundle,
        history=result.history,
        seconds=result.seconds,
        env_steps=result.env_steps,
        evaluation=ev,
    )


def record(outcome: TrainOutcome, parent_run_id: str | None = None) -> dict[str, Any]:
    """Log a finished training to MLflow (driver only) and register its policy."""
    job = outcome.job
    with tempfile.TemporaryDirectory(prefix="recaudit-bundle-") as tmp:
        outcome.bundle.save(Path(tmp))
        params = {f"ppo.{k}": v for k, v in job.config.model_dump(mode="json").items()}
        params.update(
            kind=job.kind, scenario=job.scenario.id, scenario_fingerprint=job.scenario.fingerprint()
        )
        summary = {
            **outcome.evaluation,
            "final/seconds": outcome.seconds,
            "final/env_steps_per_s": outcome.env_steps_per_s,
        }
        return tracking.log_training(
            kind=job.kind,
            scenario_id=job.scenario.id,
            fingerprint=job.fingerprint(),
            params=params,
            history=outcome.history,
            summary=summary,
            bundle_dir=Path(tmp),
            parent_run_id=parent_run_id,
        )


class TrainProgress:
    """Iterations done of each learner of a batch, and an estimate of the time left (the
    rate so far over the whole batch, so parallel training counts)."""

    def __init__(self, jobs: list[TrainJob]) -> None:
        self.kinds = [j.kind for j in jobs]
        self.total = [j.config.iterations for j in jobs]
        self.done = [0] * len(jobs)
        self.start = time.monotonic()

    def update(self, i: int, done: int) -> None:
        self.done[i] = max(self.done[i], int(done))

    @property
    def fraction(self) -> float:
        return sum(self.done) / max(1, sum(self.total))

    def seconds_left(self) -> float | None:
        done = sum(self.done)
        if not done:
            return None
        return (time.monotonic() - self.start) * (sum(self.total) - done) / done

    def phase(self) -> str:
        """e.g. 'training 3 learners (ppo 12/60, ppo-myopic 60/60, ppo-distance 0/60):
        72/180 iterations, about 2 min left' (kept under 200 characters)."""
        n = len(self.kinds)
        active = [f"{k} {d}/{t}" for k, d, t in zip(self.kinds, self.done, self.total, strict=True)]
        head = f"training {n} learner{'s' if n != 1 else ''}"
        detail = ", ".join(active)
        if len(detail) > 100:
            running = [a for a, d, t in zip(active, self.done, self.total, strict=True) if d < t]
            detail = ", ".join(running[:3]) + (" ..." if len(running) > 3 else "")
        left = self.seconds_left()
        eta = "estimating time left" if left is None else f"about {_duration(left)} left"
        return f"{head} ({detail}): {sum(self.done)}/{sum(self.total)} iterations, {eta}"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def train_many(
    jobs: list[TrainJob],
    *,
    ray_address: str | None = None,
    parent_name: str | None = None,
    on_done: Callable[[int], None] | None = None,
    on_progress: Callable[[TrainProgress], None] | None = None,
) -> list[tuple[TrainOutcome, dict[str, Any]]]:
    """Train every job (Ray tasks when an address is given, in parallel), then log each
    from the driver; with several jobs, as child runs of one parent run.
    ``on_progress(progress)`` is called as iterations finish (see :class:`TrainProgress`)."""
    tracking.check_reachable()
    parent = None
    if parent_name and len(jobs) > 1:
        parent = tracking.start_parent(
            parent_name,
            {"members": len(jobs)},
            {"recaudit.kind": jobs[0].kind, "recaudit.sweep": "true"},
        )
    try:
        if on_progress is not None:
            board = TrainProgress(jobs)
            on_progress(board)

            def step(i: int, done: int) -> None:
                board.update(i, done)
                on_progress(board)

            outcomes = run_jobs(
                run_training, jobs, ray_address=ray_address, on_done=on_done, on_progress=step
            )
        else:
            outcomes = run_jobs(run_training, jobs, ray_address=ray_address, on_done=on_done)
        logged = [record(o, parent) for o in outcomes]
    except BaseException:
        if parent:
            tracking.end_run(parent, ok=False)
        raise
    if parent:
        tracking.end_run(parent)
    return list(zip(outcomes, logged, strict=True))


def resolve_bundle(
    kind: str, scenario: ScenarioSpec, config: PPOConfig | None = None
) -> tuple[PolicyBundle, str]:
    """The trained policy for (kind, scenario, config): from the cache (MLflow) when a
    finished run has the same fingerprint, otherwise trained now and logged."""
    job = TrainJob(kind=kind, scenario=scenario, config=config or default_config(kind))
    found = tracking.find_trained(job.fingerprint())
    if found is not None:
        run_id, directory = found
        return PolicyBundle.load(directory), run_id
    [(outcome, ids)] = train_many([job])
    return outcome.bundle, str(ids["run_id"])
