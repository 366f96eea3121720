"""Run an audit: every non-natural (arm, replicate) as a job, then paired statistics and
a verdict.

The driver plans the audit once (:mod:`auditor.plan`), gives every arm its policy
(trained learners come from the trained-policy cache), submits one
:class:`~auditor.measure.ArmJob` per non-natural arm and replicate, each beside the
natural counterfactual, one of them per replicate also measuring it as the natural arm
(:meth:`~auditor.plan.AuditPlan.jobs`), to the executor (in process,
embedded Ray or a cluster: the results are identical), analyses the outcomes
(:mod:`auditor.analysis`) and writes one MLflow parent run with a child run per arm. Only
the driver writes to MLflow. The names other modules import from here stay here.
"""

from __future__ import annotations

import os
import platform
import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from recommenders.registry import POLICIES
from recommenders.rl.policy import PolicyBundle
from simulator.errors import SpecError
from simulator.specs import ScenarioSpec

from . import tracking
from .analysis import MIN_REPLICATES_FOR_VERDICT, Analysis, _overall, _summary
from .executor import BackendChoice, Cancelled, run_jobs
from .measure import ArmOutcome, measure_arms
from .plan import (
    AuditPlan,
    BuiltinPolicy,
    PlannedArm,
    PolicyFactory,
    _train_config,
    check_spec,
    plan_audit,
)
from .provenance import code_version
from .report import EXIT_CODES, ArmInfo, AuditReport, Boundary, Provenance, Timings
from .simulate import versions
from .spec import METRICS, AuditSpec, PolicySpec

__all__ = [
    "MIN_REPLICATES_FOR_VERDICT",
    "AuditPlan",
    "AuditResult",
    "BuiltinPolicy",
    "Cancelled",
    "check_spec",
    "code_version",
    "plan_audit",
    "run_audit",
]

Resolver = Callable[[PolicySpec], PolicyFactory | None]
Progress = Callable[[float, str], None]
#: share of the progress bar given to training learners, when an audit has to
TRAIN_SHARE = 0.5


@dataclass
class AuditResult:
    report: AuditReport
    run_id: str | None

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.report.verdict]


def _resolve_factories(
    arms: list[PlannedArm],
    scenario: ScenarioSpec,
    resolver: Resolver | None,
    backend: BackendChoice,
    progress: Progress | None,
) -> tuple[float, bool]:
    """Give every arm its factory; train learners missing from the cache (in one batch,
    on the executor, which the number of learners helps choose). Returns the seconds
    spent and whether any learner was trained."""
    from .train import TrainJob, train_many

    start = time.perf_counter()
    missing: dict[str, TrainJob] = {}
    wanted: dict[str, list[PlannedArm]] = {}
    for arm in arms:
        if arm.extra or arm.kind not in POLICIES:
            factory = resolver(arm.spec) if resolver is not None else None
            if factory is None:
                raise SpecError(f"unknown policy kind {arm.spec.kind!r}")
            arm.factory = factory
            continue
        if not arm.trainable:
            arm.factory = BuiltinPolicy(arm.kind)
            continue
        job = TrainJob(
            kind=arm.kind, scenario=scenario, config=_train_config(arm.kind, dict(arm.spec.params))
        )
        fp = job.fingerprint()
        wanted.setdefault(fp, []).append(arm)
        found = tracking.find_trained(fp)
        if found is None:
            missing[fp] = job
        else:
            run_id, directory = found
            _give_bundle(wanted[fp], PolicyBundle.load(directory), run_id)
    if missing:
        if progress:
            progress(0.0, f"training {len(missing)} reference learner(s)")
        trained = train_many(
            list(missing.values()),
            ray_address=backend.resolve(len(missing)),
            on_progress=(lambda tp: progress(TRAIN_SHARE * tp.fraction, tp.phase()))
            if progress
            else None,
        )
        for fp, (outcome, ids) in zip(missing, trained, strict=True):
            _give_bundle(wanted[fp], outcome.bundle, str(ids["run_id"]))
    return time.perf_counter() - start, bool(missing)


def _give_bundle(arms: list[PlannedArm], bundle: PolicyBundle, run_id: str) -> None:
    for arm in arms:
        if arm.factory is None:
            arm.factory = BuiltinPolicy(arm.kind, dict(bundle.config), bytes(bundle.weights))
            arm.trained_run_id = run_id


# ------------------------------------------------------------------------------ run
def run_audit(
    spec: AuditSpec, *, track: bool = True, audit_id: str | None = None, **options: Any
) -> AuditResult:
    """Run ``spec`` (see :func:`_run_audit` for the options). With ``track``, the audit's
    MLflow run is opened first, so that MLflow shows it running, then failed, cancelled
    (KILLED) or finished, with its true duration."""
    audit_id = audit_id or f"a{secrets.token_hex(6)}"
    if not track:
        return _run_audit(spec, track=False, audit_id=audit_id, **options)
    if options.get("plan") is None:  # planned (and checked) once: a bad spec leaves no run
        options["plan"] = plan_audit(
            spec,
            extra_kinds=options.get("extra_kinds", ()),
            independent_kinds=options.get("independent_kinds", ()),
        )
    with tracking.live_audit(spec, audit_id) as live:
        return _run_audit(spec, track=True, audit_id=audit_id, live=live, **options)


def _run_audit(
    spec: AuditSpec,
    *,
    live: tuple[str, str] | None = None,
    ray_address: str | None = None,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    track: bool = True,
    render: Callable[[AuditReport, Path], object] | None = None,
    out_dir: Path | None = None,
    resolve_policy: Resolver | None = None,
    audit_id: str | None = None,
    extra_kinds: Collection[str] = (),
    independent_kinds: Collection[str] = (),
    plan: AuditPlan | None = None,
) -> AuditResult:
    """Run ``spec``: ``ray_address`` None runs in this process, ``"local"`` on embedded
    Ray, :data:`auditor.executor.AUTO` where the work calls for it, anything else on that
    cluster. ``progress(fraction, phase)`` is called from this
    thread; setting ``cancel`` stops the audit at the next task boundary (``Cancelled``).
    ``render(report, directory)`` writes the HTML report and figures, which are logged
    with the report as artifacts (and copied to ``out_dir`` when given). Arms of
    ``extra_kinds`` come from ``resolve_policy``; those of ``independent_kinds`` among
    them are frozen and keep per-user state only (see PolicyKind.users_independent).
    ``plan`` is ``plan_audit(spec, ...)`` when the caller made it already."""
    t_start = time.perf_counter()
    created = datetime.now(UTC).isoformat(timespec="seconds")
    if plan is None:
        plan = plan_audit(spec, extra_kinds=extra_kinds, independent_kinds=independent_kinds)
    elif plan.spec != spec:
        raise ValueError("the plan was made from another spec")
    scenario, steps, arms, ckpts = plan.scenario, plan.steps, plan.arms, plan.checkpoints
    audit_id = audit_id or f"a{secrets.token_hex(6)}"
    if track and live is None:
        tracking.check_reachable()

    def report_progress(fraction: float, phase: str) -> None:
        if cancel is not None and cancel.is_set():
            raise Cancelled(f"audit {audit_id} was cancelled")
        if progress is not None:
            progress(fraction, phase)

    report_progress(0.0, "preparing")
    work = spec.users * steps * len(arms) * spec.replicates
    retraining = spec.replicates * sum(1 for a in arms if a.retrains)
    # ray_address may be executor.AUTO
    backend = BackendChoice(ray_address, user_steps=work, retraining=retraining)
    train_s, trained = _resolve_factories(arms, scenario, resolve_policy, backend, report_progress)
    ray_address = backend.resolve()
    start_at = TRAIN_SHARE if trained else 0.05
    jobs = plan.jobs()
    done = [0]

    def on_done(_: int) -> None:
        done[0] += 1
        frac = min(0.9, start_at + (0.9 - start_at) * done[0] / len(jobs))
        report_progress(frac, f"simulated {done[0]}/{len(jobs)} runs")

    n_arms = len(arms) * spec.replicates
    report_progress(
        start_at, f"simulating {n_arms} arm-replicates in {len(jobs)} runs ({backend.name})"
    )
    t_sim = time.perf_counter()
    done_jobs = run_jobs(
        measure_arms,
        jobs,
        ray_address=ray_address,
        on_done=on_done,
        should_stop=(lambda: cancel.is_set()) if cancel is not None else None,
    )
    outcomes = [o for outs in done_jobs for o in outs]
    simulate_s = time.perf_counter() - t_sim
    report_progress(0.9, "analysing")

    t_an = time.perf_counter()
    an = Analysis(spec, arms, outcomes, steps, list(ckpts))
    boundaries = _boundaries(outcomes)
    del outcomes
    reported = spec.reported_metrics(scenario)
    summaries = an.metric_summaries(reported)
    effects = an.effects(reported)
    criteria = an.criteria()
    verdict = _overall(criteria)
    from .measure import axis_range

    lo, hi = axis_range(scenario.space)
    version, commit = code_version()
    executor = backend.name
    analyse_s = time.perf_counter() - t_an
    report = AuditReport(
        id=audit_id,
        spec=spec,
        users=spec.users,
        steps=steps,
        alpha=spec.alpha,
        arms=[
            ArmInfo(
                label=a.label,
                kind=a.spec.kind,
                role=a.role,
                params=dict(a.spec.params),
                oracle=a.oracle,
                trained_run_id=a.trained_run_id,
                penalty_weight=a.penalty_weight,
                boundary=boundaries.get(a.label),
            )
            for a in arms
        ],
        metrics=summaries,
        metric_descriptions={m: METRICS[m] for m in reported},
        curves=an.curves(),
        distributions=an.distributions(lo, hi),
        per_user=an.per_user(),
        effects=effects,
        criteria=criteria,
        verdict=verdict,
        summary=_summary(spec, scenario, steps, verdict, arms, summaries, criteria),
        provenance=Provenance(
            fingerprint=spec.fingerprint(),
            scenario_id=scenario.id,
            scenario_fingerprint=scenario.fingerprint(),
            seeds=[spec.seed + r for r in range(spec.replicates)],
            code_version=version,
            git_commit=commit,
            packages=versions(),
            executor=executor,
            executor_reason=backend.reason,
            tracking_uri=tracking.shown_store() if track else None,
            host=platform.node(),
            created=created,
            timings=Timings(
                total_s=0.0, train_s=train_s, simulate_s=simulate_s, analyse_s=analyse_s
            ),
        ),
    )
    run_id = None
    t_log = time.perf_counter()
    if track:
        report_progress(0.95, "logging to MLflow")
        run_id, exp_id = tracking.start_audit(report, live)
        report.provenance.mlflow_run_id = run_id
        report.provenance.mlflow_experiment_id = exp_id
    timings = report.provenance.timings
    timings.log_s = time.perf_counter() - t_log
    timings.total_s = time.perf_counter() - t_start  # up to the artifact upload
    try:
        with tempfile.TemporaryDirectory(prefix="recaudit-report-") as tmp:
            directory = Path(tmp)
            _write(report, directory, render)
            if run_id is not None:
                tracking.finish_audit(run_id, report, directory)
            if out_dir is not None:
                _copy_tree(directory, out_dir)
    except BaseException:
        if run_id is not None:
            tracking.end_run(run_id, ok=False)
        raise
    report_progress(1.0, "done")
    return AuditResult(report=report, run_id=run_id)


def _boundaries(outcomes: list[ArmOutcome]) -> dict[str, Boundary]:
    """Per arm, what its policy stated about ids at the boundary: the first replicate's
    statement with the cold-user count of every replicate."""
    by: dict[str, list[ArmOutcome]] = {}
    for o in sorted(outcomes, key=lambda o: o.replicate):
        if o.boundary is not None:
            by.setdefault(o.label, []).append(o)
    out = {}
    for label, outs in by.items():
        first = dict(outs[0].boundary or {})
        first["cold_users"] = [int((o.boundary or {}).get("cold_users", 0)) for o in outs]
        first.pop("protocol", None)
        out[label] = Boundary.model_validate(first)
    return out


def _write(
    report: AuditReport, directory: Path, render: Callable[[AuditReport, Path], object] | None
) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    if render is not None:
        render(report, directory)
    (directory / "report.json").write_text(report.to_json())


def _copy_tree(src: Path, dst: Path) -> None:
    import shutil

    dst.mkdir(parents=True, exist_ok=True)
    for path in sorted(src.rglob("*")):
        if path.is_file():
            target = dst / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp")
            shutil.copyfile(path, tmp)
            os.replace(tmp, target)
