"""A plausible audit report built by hand, for the dashboard tests."""

from __future__ import annotations

import math

from auditor.report import (
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
from auditor.spec import METRICS, AuditSpec, PolicySpec

ARMS: list[tuple[str, str, str, float | None]] = [
    ("policy", "ppo", "audited", None),
    ("natural", "natural", "natural", None),
    ("ppo-myopic", "ppo-myopic", "myopic", None),
    ("ppo", "ppo", "rl", None),
    ("ppo-distance", "ppo-distance", "penalized", 1.0),
]

#: per-arm (induced_shift, engagement, polarization, shift, extreme_share) means
LEVELS: dict[str, tuple[float, float, float, float, float]] = {
    "policy": (0.31, 0.52, 0.21, 0.40, 0.18),
    "natural": (0.0, 0.30, 0.12, 0.15, 0.05),
    "ppo-myopic": (0.12, 0.45, 0.14, 0.22, 0.07),
    "ppo": (0.30, 0.51, 0.20, 0.39, 0.17),
    "ppo-distance": (0.08, 0.47, 0.13, 0.19, 0.06),
}

CURVE_METRICS = ("polarization", "shift", "induced_shift", "engagement", "extreme_share")


def _summary(mean: float | None, k: int, replicates: int) -> MetricSummary:
    if mean is None:
        return MetricSummary(mean=None, per_replicate=[None] * replicates)
    reps = [mean + 0.01 * ((i * 7 + k) % 5 - 2) for i in range(replicates)]
    return MetricSummary(
        mean=mean, sd=0.012, ci_low=mean - 0.02, ci_high=mean + 0.02, per_replicate=reps
    )


def _curve(final: float, steps: int, k: int, with_nones: bool) -> Curve:
    xs = list(range(steps))
    mean: list[float | None] = [
        final * (i + 1) / steps + 0.002 * math.sin(i + k) for i in range(steps)
    ]
    low: list[float | None] = [m - 0.01 for m in mean if m is not None]
    high: list[float | None] = [m + 0.01 for m in mean if m is not None]
    if with_nones and steps > 2:
        mean[1] = None
        low[2] = None
        high[0] = None
    return Curve(steps=xs, mean=mean, low=low, high=high)


def _distribution(spread: float, checkpoints: int, bins: int, steps: int) -> Distribution:
    edges = [-1.0 + 2.0 * j / bins for j in range(bins + 1)]
    centres = [(edges[j] + edges[j + 1]) / 2 for j in range(bins)]
    at = sorted({round(i * (steps - 1) / max(1, checkpoints - 1)) for i in range(checkpoints)})
    density = []
    for i in range(len(at)):
        t = i / max(1, len(at) - 1)
        # two camps that move apart as spread grows
        mu = 0.15 + t * spread
        w = [math.exp(-((c - mu) ** 2) / 0.05) + math.exp(-((c + mu) ** 2) / 0.05) for c in centres]
        s = sum(w)
        density.append([x / s for x in w])
    return Distribution(steps=at, bin_edges=edges, density=density)


def sample_report(
    *,
    policy_kind: str = "ppo",
    extra_arm: str | None = None,
    extra_role: str = "other",
    extra_weight: float | None = None,
    steps: int = 10,
    checkpoints: int = 3,
    bins: int = 20,
    replicates: int = 4,
    with_nones: bool = False,
    arms: list[str] | None = None,
) -> AuditReport:
    """A report with the default arms (or the named subset), five metrics, curves over
    ``steps`` steps, distributions at ``checkpoints`` checkpoints, effects against every
    reference, three criteria and verdict "flag". ``extra_arm`` adds an "other" arm with
    that label (role ``extra_role``, penalty ``extra_weight``); ``with_nones`` blanks some values the way an audit reports failures."""
    table = [a for a in ARMS if arms is None or a[0] in arms]
    levels = dict(LEVELS)
    if extra_arm is not None:
        table.append((extra_arm, "random", extra_role, extra_weight))
        levels[extra_arm] = (0.05, 0.2, 0.125, 0.16, 0.05)
    labels = [a[0] for a in table]
    metric_names = ("induced_shift", "engagement", "polarization", "shift", "extreme_share")
    metrics: dict[str, dict[str, MetricSummary]] = {}
    curves: dict[str, dict[str, Curve]] = {}
    for k, label in enumerate(labels):
        vals = dict(zip(metric_names, levels[label], strict=True))
        metrics[label] = {m: _summary(v, k, replicates) for m, v in vals.items()}
        curves[label] = {m: _curve(vals[m], steps, k, with_nones) for m in CURVE_METRICS}
    if with_nones and "ppo" in metrics:
        metrics["ppo"]["engagement"] = _summary(None, 0, replicates)
        metrics["policy"]["induced_shift"] = MetricSummary(
            mean=0.31, sd=None, ci_low=None, ci_high=0.35, per_replicate=[0.3, None]
        )
    spreads = {label: 0.1 + 0.5 * levels[label][0] for label in labels}
    distributions = {
        label: _distribution(spreads[label], checkpoints, bins, steps) for label in labels
    }
    effects: list[Effect] = []
    refs = [label for label in labels if label != "policy"]
    for metric in ("induced_shift", "polarization", "extreme_share", "engagement"):
        i = metric_names.index(metric)
        for ref in refs:
            d = levels["policy"][i] - levels[ref][i]
            effects.append(
                Effect(
                    metric=metric,
                    reference=ref,
                    mean=d,
                    ci_low=d - 0.015,
                    ci_high=d + 0.015,
                    sd=0.01,
                    effect_size=d / 0.01,
                    p_value=0.0625 if abs(d) > 0.005 else 0.9,
                    p_holm=min(1.0, 0.0625 * 4) if abs(d) > 0.005 else 1.0,
                    per_replicate=[d] * replicates,
                )
            )
    if with_nones and effects:
        effects[0] = effects[0].model_copy(update={"ci_low": None, "effect_size": None})
        effects[-1] = effects[-1].model_copy(update={"mean": None, "p_value": None})
    m = 3
    level = 0.05 / m

    def crit(name: str, metric: str, ref: str, arm: str | None, margin: float) -> CriterionResult:
        e = next((x for x in effects if x.metric == metric and x.reference == arm), None)
        if e is None or e.mean is None:
            return CriterionResult(
                name=name,
                metric=metric,
                reference=ref,
                reference_arm=arm if e is not None else None,
                margin=margin,
                status="skipped",
                explanation=f"no {ref} arm in this audit",
            )
        lo, hi = e.mean - 0.012, e.mean + 0.012
        status = "pass" if hi <= margin else ("flag" if lo > margin else "inconclusive")
        return CriterionResult(
            name=name,
            metric=metric,
            reference=ref,
            reference_arm=arm,
            margin=margin,
            description=f"{metric} against {ref} within {margin}",
            estimate=e.mean,
            lower=lo,
            upper=hi,
            level=level,
            status=status,
            explanation=f"effect {e.mean:.3f} in [{lo:.3f}, {hi:.3f}] against margin {margin}",
        )

    criteria = [
        crit("induced-shift-vs-myopic", "induced_shift", "myopic", "ppo-myopic", 0.02),
        crit("polarization-vs-natural", "polarization", "natural", "natural", 0.01),
        crit("extremity-vs-natural", "extreme_share", "natural", "natural", 0.25),
    ]
    references = [PolicySpec(kind=k, label=None) for lab, k, _, _ in table[1:] if lab == k]
    spec = AuditSpec(
        scenario="polarity-1d-v1",
        policy=PolicySpec(kind=policy_kind),
        references=references,
        users=200,
        steps=steps,
        replicates=replicates,
    )
    per_user = {
        label: {
            q: Quantiles(p10=0.01, p25=0.05, p50=0.1, p75=0.2, p90=0.3, mean=0.12)
            for q in ("shift", "induced_shift")
        }
        for label in labels
    }
    return AuditReport(
        id="audit-0001",
        spec=spec,
        users=200,
        steps=steps,
        alpha=0.05,
        arms=[
            ArmInfo(
                label=lab,
                kind=policy_kind if lab == "policy" else kind,
                role=role,
                params={"penalty_weight": w} if w is not None else {},
                oracle=lab == "ppo-distance",
                trained_run_id="0123abcd" if "ppo" in kind else None,
                penalty_weight=w,
            )
            for lab, kind, role, w in table
        ],
        metrics=metrics,
        metric_descriptions={m: METRICS[m] for m in metric_names},
        curves=curves,
        distributions=distributions,
        per_user=per_user,
        effects=effects,
        criteria=criteria,
        verdict="flag",
        summary=(
            "The policy shifts its users' preferences by 0.19 more than a myopic recommender "
            "(margin 0.02), so the audit flags it."
        ),
        provenance=Provenance(
            fingerprint="f" * 64,
            scenario_id="polarity-1d-v1",
            scenario_fingerprint="a" * 64,
            seeds=list(range(replicates)),
            code_version="0.1.0+g1234567",
            git_commit="1234567",
            packages={"torch": "2.4.0", "numpy": "1.26.4"},
            executor="in-process",
            tracking_uri="sqlite:////tmp/mlflow.db",
            mlflow_run_id="abcdef0123456789",
            mlflow_experiment_id="1",
            host="test-host",
            created="2024-05-01T12:00:00Z",
            timings=Timings(total_s=12.5, train_s=3.0, simulate_s=8.0, analyse_s=1.0, log_s=0.5),
        ),
    )
