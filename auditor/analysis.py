"""The analysis of an audit's outcomes: per-arm summaries, curves, distributions, the
descriptive effects, the criteria and the verdict with its explanation."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from simulator.specs import ScenarioSpec

from . import stats
from .measure import STEP_METRICS, ArmOutcome
from .plan import PlannedArm, add_reference, reference_arm
from .report import (
    CriterionResult,
    Curve,
    Distribution,
    Effect,
    MetricSummary,
    Quantiles,
)
from .spec import AUDITED, NATURAL, USER_METRICS, AuditSpec

#: replicates needed before a criterion can pass or flag on a non-degenerate difference
MIN_REPLICATES_FOR_VERDICT = 5


def _clean(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def _clean_list(xs: Any) -> list[float | None]:
    return [_clean(float(v)) for v in xs]


class Analysis:
    """Per-replicate figures of every arm, then summaries, effects and criteria."""

    def __init__(
        self,
        spec: AuditSpec,
        arms: list[PlannedArm],
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
            self.induced_curve[label] = ind.mean(axis=2).T  # [K, R]
            self.users[label] = {
                m: np.stack([o.per_user[m] for o in outs]).astype(np.float64)
                for m in outs[0].per_user
            }
            self.user_induced[label] = self.users[label]["induced_shift"].ravel()
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
                            f"{add_reference(c.reference)}, or list the criteria without it"
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
    arms: list[PlannedArm],
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
