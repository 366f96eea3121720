"""Run an audit: every (arm, replicate) as a job, then paired statistics and a verdict.

The driver resolves the arms (trained learners come from the trained-policy cache),
submits one :class:`~auditor.measure.ArmJob` per arm and replicate to the executor (in
process, embedded Ray or a cluster: the results are identical), compares each reference
with the audited policy replicate by replicate, and writes one MLflow parent run with a
child run per arm. Only the driver writes to MLflow.
"""

from __future__ import annotations

import math
import os
import platform
import secrets
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from recommenders.registry import POLICIES, get_kind, make_policy
from recommenders.rl.policy import PolicyBundle
from simulator.errors import SpecError
from simulator.policy import Policy
from simulator.specs import ScenarioSpec

from . import stats, tracking
from .executor import Cancelled, run_jobs
from .measure import STEP_METRICS, ArmJob, ArmOutcome, checkpoints, run_arm
from .report import (
    EXIT_CODES,
    ArmInfo,
    AuditReport,
    CriterionResult,
    Curve,
    Distribution,
    Effect,
    MetricSummary,
    Provenance,
    Quantiles,
    Timings,
)
from .simulate import versions
from .spec import (
    AUDITED,
    METRICS,
    NATURAL,
    USER_METRICS,
    AuditSpec,
    Criterion,
    PolicySpec,
    default_criteria,
)

__all__ = ["AuditResult", "Cancelled", "check_spec", "run_audit"]

PolicyFactory = Callable[[], Policy]
Resolver = Callable[[PolicySpec], PolicyFactory | None]
Progress = Callable[[float, str], None]

#: replicates needed before a criterion can pass or flag on a non-degenerate difference
MIN_REPLICATES_FOR_VERDICT = 5

_ROLE_OF_KIND = {
    NATURAL: "natural",
    "ppo-myopic": "myopic",
    "myopic": "myopic",
    "ppo": "rl",
    "ppo-safe-shift": "penalized",
    "ppo-distance": "penalized",
    "ppo-path-specific": "penalized",
}
#: kinds that play each reference role, to tell a user which reference to add
_KINDS_OF_ROLE = {
    "natural": "natural",
    "myopic": "ppo-myopic or myopic",
    "rl": "ppo",
    "penalized": "ppo-distance, ppo-safe-shift or ppo-path-specific",
}


def arm_role(label: str, kind: str) -> str:
    """The role an arm plays: audited, natural, myopic, rl, penalized or other."""
    return "audited" if label == AUDITED else _ROLE_OF_KIND.get(kind, "other")


def reference_arm(arms: list[tuple[str, str]], ref: str) -> str | None:
    """The arm a criterion's reference names among ``(label, role)`` pairs: a label
    first, then a role; never the audited policy."""
    refs = [(label, role) for label, role in arms if label != AUDITED]
    for label, _ in refs:
        if label == ref:
            return label
    for label, role in refs:
        if role == ref:
            return label
    return None


def _add_reference(ref: str) -> str:
    kinds = _KINDS_OF_ROLE.get(ref)
    what = (
        f"a reference playing the {ref} role (kind {kinds})"
        if kinds
        else f"a reference labelled {ref!r}"
    )
    return f"add {what} to the references"


def _is_default(c: Criterion) -> bool:
    return c in default_criteria()


def _check_criteria(spec: AuditSpec) -> None:
    """A criterion the user wrote must name a reference of the audit. (A default criterion
    whose reference is absent is kept: it makes the verdict inconclusive and says what to
    add, so that leaving out a reference can never turn into a pass.)"""
    arms = [(label, arm_role(label, p.kind)) for label, p in spec.arms()]
    for c in spec.criteria:
        if reference_arm(arms, c.reference) is None and not _is_default(c):
            raise SpecError(
                f"criterion {c.name!r} names the reference {c.reference!r}, which is not in "
                f"this audit; {_add_reference(c.reference)} or drop the criterion"
            )


@dataclass(frozen=True)
class BuiltinPolicy:
    """A picklable factory for a registry policy (with its trained bundle if any)."""

    kind: str
    config: dict[str, Any] | None = None
    weights: bytes | None = None

    def __call__(self) -> Policy:
        bundle = None
        if self.config is not None and self.weights is not None:
            bundle = PolicyBundle(config=self.config, weights=self.weights)
        return make_policy(self.kind, bundle)


@dataclass
class _Arm:
    label: str
    spec: PolicySpec
    kind: str  # registry kind actually run ('natural' resolved to the scenario's)
    role: str
    factory: PolicyFactory | None = None
    trained_run_id: str | None = None
    penalty_weight: float | None = None
    oracle: bool = False
    users_independent: bool = False  # see PolicyKind.users_independent


@dataclass
class AuditResult:
    report: AuditReport
    run_id: str | None

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.report.verdict]


# ----------------------------------------------------------------------------- arms
def _train_config(kind: str, params: dict[str, Any]) -> Any:
    from .train import default_config

    return default_config(kind, **params)


def check_spec(spec: AuditSpec, extra_kinds: Collection[str] = ()) -> None:
    """Refuse an audit that cannot run, with one clear line: unknown scenario or policy
    kinds, parameters a kind does not take, an audit of the natural policy itself."""
    spec.scenario_spec()
    _check_criteria(spec)
    if spec.policy.kind == NATURAL:
        raise SpecError("the policy under audit cannot be 'natural'; it is the counterfactual")
    for label, p in spec.arms():
        if p.kind in extra_kinds:
            continue
        if p.kind == NATURAL:
            if p.params:
                raise SpecError("the natural reference takes no parameters")
            continue
        kind = get_kind(p.kind)  # raises: unknown policy, with the known ones
        if kind.trainable:
            try:
                _train_config(p.kind, dict(p.params))
            except (SpecError, ValidationError) as exc:
                raise SpecError(f"arm {label!r} ({p.kind}): {exc}") from None
        elif p.params:
            raise SpecError(
                f"policy {p.kind!r} takes no parameters (got {', '.join(sorted(p.params))})"
            )


def _arms(
    spec: AuditSpec,
    scenario: ScenarioSpec,
    extra_kinds: Collection[str],
    independent_kinds: Collection[str] = (),
) -> list[_Arm]:
    out = []
    for label, p in spec.arms():
        kind = scenario.natural_policy if p.kind == NATURAL else p.kind
        arm = _Arm(label=label, spec=p, kind=kind, role=arm_role(label, p.kind))
        arm.users_independent = p.kind in independent_kinds
        if p.kind not in extra_kinds:
            k = get_kind(kind)
            arm.oracle = k.oracle
            arm.users_independent = k.users_independent
            if k.trainable:
                arm.penalty_weight = float(p.params.get("penalty_weight", k.penalty_weight))
        out.append(arm)
    return out


def _resolve_factories(
    arms: list[_Arm],
    scenario: ScenarioSpec,
    resolver: Resolver | None,
    ray_address: str | None,
    progress: Progress | None,
) -> float:
    """Give every arm its factory; train learners missing from the cache (in one batch,
    on the executor). Returns the seconds spent training."""
    from .train import TrainJob, train_many

    start = time.perf_counter()
    missing: dict[str, TrainJob] = {}
    wanted: dict[str, list[_Arm]] = {}
    for arm in arms:
        if arm.kind not in POLICIES:
            factory = resolver(arm.spec) if resolver is not None else None
            if factory is None:
                raise SpecError(f"unknown policy kind {arm.spec.kind!r}")
            arm.factory = factory
            continue
        if not get_kind(arm.kind).trainable:
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
        trained = train_many(list(missing.values()), ray_address=ray_address)
        for fp, (outcome, ids) in zip(missing, trained, strict=True):
            _give_bundle(wanted[fp], outcome.bundle, str(ids["run_id"]))
    return time.perf_counter() - start


def _give_bundle(arms: list[_Arm], bundle: PolicyBundle, run_id: str) -> None:
    for arm in arms:
        if arm.factory is None:
            arm.factory = BuiltinPolicy(arm.kind, dict(bundle.config), bytes(bundle.weights))
            arm.trained_run_id = run_id


# ------------------------------------------------------------------------- analysis
def _clean(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def _clean_list(xs: Any) -> list[float | None]:
    return [_clean(float(v)) for v in xs]


class _Analysis:
    """Per-replicate figures of every arm, then summaries, effects and criteria."""

    def __init__(
        self,
        spec: AuditSpec,
        arms: list[_Arm],
        outcomes: list[ArmOutcome],
        steps: int,
        ckpts: list[int],
    ) -> None:
        self.spec, self.arms, self.steps = spec, arms, steps
        self.labels = [a.label for a in arms]
        by = {(o.label, o.replicate): o for o in outcomes}
        reps = range(spec.replicates)
        self.checkpoints = ckpts
        # final figures [arm][metric] -> [R]
        self.final: dict[str, dict[str, np.ndarray]] = {}
        self.per_step: dict[str, dict[str, np.ndarray]] = {}  # [T, R]
        self.induced_curve: dict[str, np.ndarray] = {}  # [K, R]
        self.user_shift: dict[str, np.ndarray] = {}
        self.user_induced: dict[str, np.ndarray] = {}
        self.users: dict[str, dict[str, np.ndarray]] = {}  # [arm][metric] -> [R, B]
        self.hist: dict[str, np.ndarray] = {}
        for label in self.labels:
            outs = [by[(label, r)] for r in reps]
            nats = [by[(NATURAL, r)] for r in reps]
            fin = {m: np.array([o.final[m] for o in outs], dtype=np.float64) for m in outs[0].final}
            induced = []
            for o, n in zip(outs, nats, strict=True):
                d = np.linalg.norm(o.snapshots.astype(np.float64) - n.snapshots, axis=2)  # [K, B]
                induced.append(d)
            ind = np.stack(induced)  # [R, K, B]
            fin["induced_shift"] = ind[:, -1, :].mean(axis=1)
            self.induced_curve[label] = ind.mean(axis=2).T  # [K, R]
            self.user_induced[label] = ind[:, -1, :].ravel()
            self.users[label] = {
                m: np.stack([o.per_user[m] for o in outs]).astype(np.float64)
                for m in outs[0].per_user
            }
            self.users[label]["induced_shift"] = ind[:, -1, :]
            self.user_shift[label] = np.concatenate(
                [
                    np.linalg.norm(o.snapshots[-1].astype(np.float64) - o.snapshots[0], axis=1)
                    for o in outs
                ]
            )
            self.final[label] = fin
            self.per_step[label] = {
                m: np.array([o.per_step[m] for o in outs], dtype=np.float64).T for m in STEP_METRICS
            }
            self.hist[label] = np.sum([o.histograms for o in outs], axis=0).astype(np.float64)

    # summaries ---------------------------------------------------------------------
    def metric_summaries(self, metrics: list[str]) -> dict[str, dict[str, MetricSummary]]:
        out: dict[str, dict[str, MetricSummary]] = {}
        for label in self.labels:
            out[label] = {}
            for m in metrics:
                v = self.final[label][m]
                f = v[np.isfinite(v)]
                rng = stats.stream(self.spec.seed, "summary", label, m)
                lo, hi = stats.bounds(v, self.spec.alpha / 2, self.spec.bootstrap, rng)
                out[label][m] = MetricSummary(
                    mean=_clean(float(f.mean())) if f.size else None,
                    sd=_clean(float(f.std(ddof=1))) if f.size > 1 else None,
                    ci_low=_clean(lo),
                    ci_high=_clean(hi),
                    per_replicate=_clean_list(v),
                )
        return out

    def curves(self) -> dict[str, dict[str, Curve]]:
        out: dict[str, dict[str, Curve]] = {}
        steps = list(range(1, self.steps + 1))
        for label in self.labels:
            out[label] = {}
            series = dict(self.per_step[label])
            series["cumulative_clicks"] = np.cumsum(series["engagement"], axis=0)
            series_at = {m: (steps, x) for m, x in series.items()}
            series_at["induced_shift"] = (self.checkpoints, self.induced_curve[label])
            for m, (at, x) in series_at.items():
                out[label][m] = self._curve(at, x, stats.stream(self.spec.seed, "curve", label, m))
        return out

    def _curve(self, steps: list[int], x: np.ndarray, rng: np.random.Generator) -> Curve:
        x = np.where(np.isfinite(x), x, np.nan)
        with np.errstate(all="ignore"):
            mean = np.nanmean(x, axis=1) if x.size else x
        if np.all(np.isfinite(x)):
            lo, hi = stats.band(x, self.spec.alpha, min(self.spec.bootstrap, 1000), rng)
        else:
            lo = hi = np.full(x.shape[0], np.nan)
        return Curve(steps=steps, mean=_clean_list(mean), low=_clean_list(lo), high=_clean_list(hi))

    def distributions(self, lo: float, hi: float) -> dict[str, Distribution]:
        out = {}
        for label in self.labels:
            h = self.hist[label]
            dens = h / h.sum(axis=1, keepdims=True)
            edges = np.linspace(lo, hi, h.shape[1] + 1)
            out[label] = Distribution(
                steps=self.checkpoints,
                bin_edges=[round(float(e), 10) for e in edges],
                density=[[float(v) for v in row] for row in dens],
            )
        return out

    def per_user(self) -> dict[str, dict[str, Quantiles]]:
        def q(x: np.ndarray) -> Quantiles:
            p = np.quantile(x, [0.1, 0.25, 0.5, 0.75, 0.9])
            return Quantiles(
                p10=_clean(p[0]),
                p25=_clean(p[1]),
                p50=_clean(p[2]),
                p75=_clean(p[3]),
                p90=_clean(p[4]),
                mean=_clean(float(x.mean())),
            )

        return {
            label: {
                "shift": q(self.user_shift[label]),
                "induced_shift": q(self.user_induced[label]),
            }
            for label in self.labels
        }

    # effects -------------------------------------------------------------------------
    def diffs(self, metric: str, ref: str) -> np.ndarray:
        return self.final[AUDITED][metric] - self.final[ref][metric]

    def analysis(self, metric: str, ref: str) -> tuple[str, str]:
        """('user' or 'replicate', why) for the paired effect of ``metric`` against ``ref``."""
        if metric not in USER_METRICS:
            return "replicate", f"{metric} is a population figure, with no per-user value"
        arms = {a.label: a for a in self.arms}
        coupled = [a for a in (AUDITED, ref) if not arms[a].users_independent]
        if coupled:
            return "replicate", (
                f"users are not independent under {' and '.join(coupled)} (a policy that "
                "learns from every user's clicks, or one not declared frozen and per-user)"
            )
        return "user", (
            "both policies are frozen and keep per-user state only, so users are "
            "independent given the policy (clustered by replicate)"
        )

    def _interval(
        self, metric: str, ref: str, tail: float, rng: np.random.Generator
    ) -> tuple[str, float, float, float, int]:
        """(analysis, lower, upper, standard error, degrees of freedom) of the paired
        effect, one-sided bounds at level ``tail`` each."""
        d = self.diffs(metric, ref)
        f = d[np.isfinite(d)]
        kind, _ = self.analysis(metric, ref)
        if kind == "user" and f.size == d.size:
            ud = self.users[AUDITED][metric] - self.users[ref][metric]
            ul = stats.user_level(ud)
            lo, hi = stats.t_bounds(float(f.mean()), ul.se, ul.df, tail)
            return kind, lo, hi, ul.se, ul.df
        lo, hi = stats.bounds(d, tail, self.spec.bootstrap, rng)
        se = float(f.std(ddof=1) / math.sqrt(f.size)) if f.size > 1 else math.nan
        return "replicate", lo, hi, se, max(0, f.size - 1)

    def effects(self, metrics: list[str]) -> list[Effect]:
        """The descriptive table: paired effects with two-sided (1 - alpha) intervals and
        effect sizes, without tests (the verdict's tests are the criteria)."""
        rows: list[Effect] = []
        for ref in self.labels[1:]:
            for m in metrics:
                d = self.diffs(m, ref)
                rng = stats.stream(self.spec.seed, "effect", m, ref)
                e = stats.paired_effect(d, self.spec.alpha, self.spec.bootstrap, rng)
                kind, lo, hi, _, _ = self._interval(m, ref, self.spec.alpha / 2, rng)
                rows.append(
                    Effect(
                        metric=m,
                        reference=ref,
                        analysis=kind,
                        mean=_clean(e.mean),
                        ci_low=_clean(lo),
                        ci_high=_clean(hi),
                        sd=_clean(e.sd),
                        effect_size=_clean(e.effect_size),
                        per_replicate=_clean_list(d),
                    )
                )
        return rows

    def criteria(self) -> list[CriterionResult]:
        spec = self.spec
        resolved = [(c, self._reference_arm(c.reference)) for c in spec.criteria]
        m = max(1, sum(1 for _, arm in resolved if arm is not None))
        level = spec.alpha / m
        out = []
        for c, arm in resolved:
            base: dict[str, Any] = {
                "name": c.name,
                "metric": c.metric,
                "reference": c.reference,
                "reference_arm": arm,
                "margin": c.margin,
                "description": c.description,
            }
            if arm is None:
                out.append(
                    CriterionResult(
                        **base,
                        status="inconclusive",
                        explanation=(
                            f"cannot be evaluated: this audit has no {c.reference!r} reference; "
                            f"{_add_reference(c.reference)}, or list the criteria without it"
                        ),
                    )
                )
                continue
            d = self.diffs(c.metric, arm)
            f = d[np.isfinite(d)]
            rng = stats.stream(spec.seed, "criterion", c.metric, arm)
            kind, lower, upper, se, df = self._interval(c.metric, arm, level, rng)
            planned, reason = self.analysis(c.metric, arm)
            if planned != kind:
                reason = "some replicates gave no value, so users cannot be analysed"
            status = stats.decide(lower, upper, c.margin)
            degenerate = f.size > 0 and bool(np.all(f == f[0]))
            few = kind == "replicate" and f.size < MIN_REPLICATES_FOR_VERDICT and not degenerate
            est = float(f.mean()) if f.size else math.nan
            mde = stats.detectable(se, df, level)
            need_r: int | None = None
            need_u: int | None = None
            if f.size < d.size:
                status = "inconclusive"
                why = f"{d.size - f.size} replicate(s) gave no value for {c.metric}"
            elif few:
                status = "inconclusive"
                why = (
                    f"{f.size} replicates cannot support a verdict at level {level:.3g}; "
                    f"use at least {MIN_REPLICATES_FOR_VERDICT}"
                )
            else:
                gap = abs(est - c.margin)
                if status == "inconclusive" and kind == "user":
                    need_u = stats.users_needed(se, spec.users, gap, level)
                elif status == "inconclusive":
                    need_r = stats.replicates_needed(float(f.std(ddof=1)), gap, level)
                why = _explain(
                    c.metric, arm, est, lower, upper, c.margin, level, status, mde, need_r, need_u
                )
            out.append(
                CriterionResult(
                    **base,
                    estimate=_clean(est),
                    lower=_clean(lower),
                    upper=_clean(upper),
                    level=level,
                    analysis=kind,
                    analysis_reason=reason,
                    mde=_clean(mde),
                    replicates_needed=need_r,
                    users_needed=need_u,
                    status=status,
                    explanation=why,
                )
            )
        return out

    def _reference_arm(self, ref: str) -> str | None:
        return reference_arm([(a.label, a.role) for a in self.arms], ref)


def _fmt(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{x:.4g}"


def _explain(
    metric: str,
    arm: str,
    est: float,
    lower: float,
    upper: float,
    margin: float,
    level: float,
    status: str,
    mde: float = math.nan,
    need_replicates: int | None = None,
    need_users: int | None = None,
) -> str:
    conf = f"{100 * (1 - level):.4g}%"
    head = f"{metric} of the policy minus {arm}: {_fmt(est)} (one-sided {conf} bounds {_fmt(lower)} to {_fmt(upper)}), margin {_fmt(margin)}"
    if status == "pass":
        return f"{head}: the upper bound is within the margin."
    if status == "flag":
        return f"{head}: even the lower bound exceeds the margin."
    power = f"{100 * stats.POWER:.0f}%"
    tail = f"this design detects a distance of {_fmt(mde)} from the margin with {power} power"
    if need_replicates is not None:
        tail += (
            f"; about {need_replicates} replicates would decide it if the effect is as estimated"
        )
    elif need_users is not None:
        tail += (
            f"; about {need_users} users per replicate would decide it if the effect is as "
            "estimated"
        )
    else:
        tail += "; no feasible design decides an effect that sits on the margin"
    return f"{head}: the interval straddles the margin; {tail}."


def _overall(criteria: list[CriterionResult]) -> str:
    statuses = [c.status for c in criteria if c.status != "skipped"]
    if "flag" in statuses:
        return "flag"
    if "inconclusive" in statuses or not statuses:
        return "inconclusive"
    return "pass"


def _summary(
    spec: AuditSpec,
    scenario: ScenarioSpec,
    steps: int,
    verdict: str,
    arms: list[_Arm],
    summaries: dict[str, dict[str, MetricSummary]],
    criteria: list[CriterionResult],
) -> str:
    pol = spec.policy.name

    def mean(label: str, m: str) -> str:
        s = summaries.get(label, {}).get(m)
        return _fmt(s.mean if s else None)

    parts = [
        f"Verdict: {verdict.upper()}. Over {spec.replicates} replicates of {spec.users} simulated "
        f"users and {steps} steps of {scenario.id}, the audited policy ({pol}) moved its users "
        f"{mean(AUDITED, 'induced_shift')} on average away from where natural drift took them "
        f"(induced shift; total shift {mean(AUDITED, 'shift')}), with engagement "
        f"{mean(AUDITED, 'engagement')} clicks per user-step against {mean(NATURAL, 'engagement')} "
        f"under natural drift."
    ]
    for a in arms:
        if a.role in ("myopic", "rl", "penalized"):
            parts.append(
                f"The {a.role} reference {a.label} induced {mean(a.label, 'induced_shift')} "
                f"with engagement {mean(a.label, 'engagement')}."
            )
    words = {"pass": "passes", "flag": "FLAGS", "inconclusive": "is inconclusive on"}
    for c in criteria:
        if c.reference_arm is None:
            parts.append(f"Criterion {c.name} {c.explanation}.")
            continue
        parts.append(
            f"It {words[c.status]} {c.name}: its {c.metric} minus {c.reference_arm}'s is "
            f"{_fmt(c.estimate)} (bounds {_fmt(c.lower)} to {_fmt(c.upper)}) against a margin "
            f"of {_fmt(c.margin)}."
        )
    return " ".join(parts)


# ------------------------------------------------------------------------ provenance
_GIT: tuple[str | None, bool] | None = None


def code_version() -> tuple[str, str | None]:
    """('recaudit <version>[+g<commit>[.dirty]]', commit or None)."""
    global _GIT
    from importlib import metadata

    try:
        package_version = metadata.version("recaudit")
    except metadata.PackageNotFoundError:
        package_version = "unknown"

    if _GIT is None:
        root = Path(__file__).resolve().parents[1]
        commit, dirty = None, False
        if (root / ".git").exists():
            try:
                commit = (
                    subprocess.run(
                        ["git", "-C", str(root), "rev-parse", "HEAD"],
                        capture_output=True,
                        text=True,
                        timeout=5,
                        check=True,
                    ).stdout.strip()
                    or None
                )
                dirty = (
                    subprocess.run(
                        ["git", "-C", str(root), "diff", "--quiet", "HEAD", "--"],
                        capture_output=True,
                        timeout=5,
                    ).returncode
                    == 1
                )
            except (OSError, subprocess.SubprocessError):
                commit = None
        _GIT = (commit, dirty)
    commit, dirty = _GIT
    version = f"recaudit {package_version}"
    if commit:
        version += f"+g{commit[:12]}" + (".dirty" if dirty else "")
    return version, commit


# ------------------------------------------------------------------------------ run
def run_audit(
    spec: AuditSpec,
    *,
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
) -> AuditResult:
    """Run ``spec``: ``ray_address`` None runs in this process, ``"local"`` on embedded
    Ray, anything else on that cluster. ``progress(fraction, phase)`` is called from this
    thread; setting ``cancel`` stops the audit at the next task boundary (``Cancelled``).
    ``render(report, directory)`` writes the HTML report and figures, which are logged
    with the report as artifacts (and copied to ``out_dir`` when given). Arms of
    ``extra_kinds`` come from ``resolve_policy``; those of ``independent_kinds`` among
    them are frozen and keep per-user state only (see PolicyKind.users_independent)."""
    t_start = time.perf_counter()
    created = datetime.now(UTC).isoformat(timespec="seconds")
    check_spec(spec, extra_kinds)
    scenario = spec.scenario_spec()
    steps = spec.steps or scenario.default_steps
    audit_id = audit_id or f"a{secrets.token_hex(6)}"
    if track:
        tracking.check_reachable()
    arms = _arms(spec, scenario, extra_kinds, independent_kinds)

    def report_progress(fraction: float, phase: str) -> None:
        if cancel is not None and cancel.is_set():
            raise Cancelled(f"audit {audit_id} was cancelled")
        if progress is not None:
            progress(fraction, phase)

    report_progress(0.0, "preparing")
    train_s = _resolve_factories(arms, scenario, resolve_policy, ray_address, report_progress)

    from simulator.catalog import build_catalog

    dim = build_catalog(scenario.catalog, scenario.env_seed).dim
    ckpts = tuple(checkpoints(steps, spec.users, dim))
    natural = next(a.factory for a in arms if a.label == NATURAL)
    jobs = []
    for r in range(spec.replicates):
        for arm in arms:
            assert arm.factory is not None
            jobs.append(
                ArmJob(
                    scenario=scenario,
                    label=arm.label,
                    factory=arm.factory,
                    users=spec.users,
                    steps=steps,
                    seed=spec.seed + r,
                    replicate=r,
                    checkpoints=ckpts,
                    extreme_threshold=spec.extreme_threshold,
                    device=spec.device,
                    counterfactual=None if arm.label == NATURAL else natural,
                )
            )
    done = [0]

    def on_done(_: int) -> None:
        done[0] += 1
        report_progress(0.05 + 0.85 * done[0] / len(jobs), f"simulated {done[0]}/{len(jobs)} arms")

    report_progress(0.05, f"simulating {len(jobs)} arm-replicates")
    t_sim = time.perf_counter()
    outcomes = run_jobs(
        run_arm,
        jobs,
        ray_address=ray_address,
        on_done=on_done,
        should_stop=(lambda: cancel.is_set()) if cancel is not None else None,
    )
    simulate_s = time.perf_counter() - t_sim
    report_progress(0.9, "analysing")

    t_an = time.perf_counter()
    an = _Analysis(spec, arms, outcomes, steps, list(ckpts))
    del outcomes
    reported = spec.reported_metrics()
    summaries = an.metric_summaries(reported)
    effects = an.effects(reported)
    criteria = an.criteria()
    verdict = _overall(criteria)
    from .measure import axis_range

    lo, hi = axis_range(scenario.space)
    version, commit = code_version()
    executor = (
        "in-process"
        if ray_address is None
        else ("ray-local" if ray_address == "local" else ray_address)
    )
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
        run_id, exp_id = tracking.start_audit(report)
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
