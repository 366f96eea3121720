"""The audit report's figures, rendered from an :class:`~auditor.report.AuditReport` alone.

``make_figures`` returns PNG bytes keyed by file name: ``distributions.png`` (users'
positions on the polarity axis over time, natural next to every arm), ``curves.png``
(per-step curves with confidence bands), ``frontier.png`` (engagement against induced
shift, the penalized learners as a frontier) and ``effects.png`` (a forest plot of the
paired effects with the criteria's margins). Figures use the object-oriented Agg API, so
no pyplot state is touched, and are byte-identical for the same report.
"""

from __future__ import annotations

import io
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import matplotlib
import matplotlib.style
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from auditor.report import AuditReport, CriterionResult, Distribution

DPI = 100
AUDITED = "policy"
NATURAL = "natural"

#: curve panels, in this order when present (other curve metrics follow, sorted)
CURVE_ORDER = (
    "polarization",
    "shift",
    "induced_shift",
    "engagement",
    "esteban_ray",
    "extreme_share",
)

STATUS_COLOURS = {
    "pass": "#1a7f37",
    "flag": "#cf222e",
    "inconclusive": "#bf8700",
    "skipped": "#6e7781",
}

_PALETTE = (
    "#1f77b4",
    "#2ca02c",
    "#9467bd",
    "#ff7f0e",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#bcbd22",
)
_AUDITED_COLOUR = "#d62728"
_NATURAL_COLOUR = "#444444"

_RC: Any = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "figure.facecolor": "white",
    "axes.grid": True,
    "grid.alpha": 0.3,
    "svg.hashsalt": "recaudit",
}

_LOCK = threading.RLock()


# --------------------------------------------------------------------------- helpers
@contextmanager
def figure_style() -> Iterator[None]:
    """Matplotlib's default style plus ours, whatever the user's rcParams; restored after."""
    with _LOCK, matplotlib.style.context("default"), matplotlib.rc_context(_RC):
        yield


def text(s: str) -> str:
    """Arm and metric names as literal matplotlib text (no mathtext)."""
    return s.replace("$", r"\$")


def _num(x: float | None) -> float:
    return math.nan if x is None else float(x)


def _arr(xs: Sequence[float | None]) -> np.ndarray:
    return np.array([_num(x) for x in xs], dtype=float)


def png(fig: Figure) -> bytes:
    """The figure as PNG bytes, without time stamps or version metadata."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _message(fig: Figure, msg: str) -> None:
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.text(0.5, 0.5, msg, ha="center", va="center", transform=ax.transAxes, color="#555555")


def arm_order(report: AuditReport) -> list[str]:
    """Arm labels in report order (the audited policy first), then any labels that only
    appear in metrics, curves or distributions, sorted."""
    labels = [a.label for a in report.arms]
    extra = set(report.metrics) | set(report.curves) | set(report.distributions)
    return labels + sorted(extra - set(labels))


def arm_colours(report: AuditReport) -> dict[str, str]:
    """A fixed colour per arm: red for the audited policy, dark grey for natural."""
    out: dict[str, str] = {}
    i = 0
    for label in arm_order(report):
        if label == AUDITED:
            out[label] = _AUDITED_COLOUR
        elif label == NATURAL:
            out[label] = _NATURAL_COLOUR
        else:
            out[label] = _PALETTE[i % len(_PALETTE)]
            i += 1
    return out


def _valid(d: Distribution) -> bool:
    n_bins = len(d.bin_edges) - 1
    return (
        len(d.steps) > 0
        and n_bins > 0
        and len(d.density) == len(d.steps)
        and all(len(row) == n_bins for row in d.density)
    )


# --------------------------------------------------------------------------- figures
def distributions_figure(report: AuditReport) -> Figure:
    """One row per arm (natural first): a heatmap of the share of users per polarity bin at
    each checkpoint, and the first and last checkpoints' histograms over natural's last."""
    order = arm_order(report)
    rows = list(dict.fromkeys(a for a in [NATURAL, *order] if a in report.distributions))
    height = 1.5 + 2.0 * max(1, len(rows))
    fig = Figure(figsize=(10, height))
    if not rows:
        _message(fig, "no distributions in this report")
        return fig
    dists = {a: report.distributions[a] for a in rows}
    vmax = max(
        (max((max(r) for r in d.density if r), default=0.0) for d in dists.values() if _valid(d)),
        default=0.0,
    )
    vmax = vmax if vmax > 0 and math.isfinite(vmax) else 1.0
    colours = arm_colours(report)
    nat = dists.get(NATURAL)
    axes = fig.subplots(
        len(rows),
        2,
        squeeze=False,
        gridspec_kw={"width_ratios": [1.4, 1], "wspace": 0.3, "hspace": 0.5},
    )
    fig.subplots_adjust(left=0.1, right=0.98, top=1 - 0.8 / height, bottom=0.75 / height)
    mesh = None
    for i, arm in enumerate(rows):
        d = dists[arm]
        hax, lax = axes[i][0], axes[i][1]
        hax.set_ylabel(f"{text(arm)}\nposition")
        if not _valid(d):
            for ax in (hax, lax):
                ax.text(0.5, 0.5, "no usable distribution", ha="center", va="center")
                ax.set_xticks([])
                ax.set_yticks([])
            continue
        dens = np.nan_to_num(np.array(d.density, dtype=float), nan=0.0)
        edges = np.array(d.bin_edges, dtype=float)
        n = len(d.steps)
        mesh = hax.pcolormesh(
            np.arange(n + 1) - 0.5, edges, dens.T, cmap="viridis", vmin=0.0, vmax=vmax
        )
        hax.grid(False)
        idx = sorted(set(np.linspace(0, n - 1, min(n, 8)).round().astype(int).tolist()))
        hax.set_xticks(idx)
        hax.set_xticklabels([str(d.steps[j]) for j in idx])
        centres = (edges[:-1] + edges[1:]) / 2
        lax.plot(centres, dens[0], color=colours[arm], alpha=0.5, ls=":", lw=1.4)
        if n > 1:
            lax.plot(centres, dens[-1], color=colours[arm], lw=1.8)
        if arm != NATURAL and nat is not None and _valid(nat):
            nd = np.nan_to_num(np.array(nat.density[-1], dtype=float), nan=0.0)
            ne = np.array(nat.bin_edges, dtype=float)
            lax.plot((ne[:-1] + ne[1:]) / 2, nd, color=_NATURAL_COLOUR, ls="--", lw=1.1)
        lax.set_ylim(0, vmax * 1.08)
        lax.set_ylabel("share of users")
        lax.set_title(
            f"{text(arm)}: steps {d.steps[0]} and {d.steps[-1]}"
            if n > 1
            else f"{text(arm)}: step {d.steps[0]}",
            fontsize=8,
            loc="left",
        )
    axes[-1][0].set_xlabel("step (checkpoint)")
    axes[-1][1].set_xlabel("position on the polarity axis")
    if mesh is not None:
        fig.colorbar(mesh, ax=[r[0] for r in axes], label="share of users", fraction=0.04, pad=0.02)
    proxies = [
        Line2D([], [], color="#555555", ls=":", lw=1.4, label="first checkpoint"),
        Line2D([], [], color="#555555", lw=1.8, label="last checkpoint"),
        Line2D([], [], color=_NATURAL_COLOUR, ls="--", lw=1.1, label="natural, last checkpoint"),
    ]
    fig.legend(handles=proxies, loc="lower center", ncol=3, frameon=False)
    fig.suptitle("Users' positions on the polarity axis over time (shared colour scale)")
    return fig


def curve_metrics(report: AuditReport) -> list[str]:
    present = {m for curves in report.curves.values() for m in curves}
    return [m for m in CURVE_ORDER if m in present] + sorted(present - set(CURVE_ORDER))


def curves_figure(report: AuditReport) -> Figure:
    """One panel per curve metric: each arm's per-step mean with its confidence band."""
    metrics = curve_metrics(report)
    ncols = min(3, max(1, len(metrics)))
    nrows = max(1, math.ceil(len(metrics) / ncols))
    height = 3.0 * nrows + 1.0
    fig = Figure(figsize=(4.2 * ncols, height))
    if not metrics:
        _message(fig, "no curves in this report")
        return fig
    colours = arm_colours(report)
    axes = fig.subplots(nrows, ncols, squeeze=False, gridspec_kw={"hspace": 0.45, "wspace": 0.25})
    # a band of 0.95 in above the panels: the figure title, then the panels' own titles
    fig.subplots_adjust(left=0.06, right=0.98, top=1 - 0.95 / height, bottom=1.05 / height)
    handles: dict[str, Any] = {}
    for k, metric in enumerate(metrics):
        ax = axes[k // ncols][k % ncols]
        for arm in arm_order(report):
            c = report.curves.get(arm, {}).get(metric)
            if c is None or not c.steps:
                continue
            n = len(c.steps)
            x = np.array(c.steps, dtype=float)
            mean, low, high = (_arr((list(v) + [None] * n)[:n]) for v in (c.mean, c.low, c.high))
            if np.isnan(mean).all():
                continue
            lw = 2.2 if arm == AUDITED else 1.4
            (line,) = ax.plot(
                x,
                mean,
                color=colours[arm],
                lw=lw,
                marker="o" if n == 1 else None,
                label=text(arm),
                zorder=3 if arm == AUDITED else 2,
            )
            handles.setdefault(arm, line)
            band = ~(np.isnan(low) | np.isnan(high))
            if band.any():
                if n == 1:
                    ax.errorbar(x, mean, yerr=[mean - low, high - mean], color=colours[arm])
                else:
                    ax.fill_between(x, low, high, where=band, color=colours[arm], alpha=0.15, lw=0)
        ax.set_title(text(metric))
        ax.set_xlabel("step")
    for k in range(len(metrics), nrows * ncols):
        axes[k // ncols][k % ncols].set_axis_off()
    if handles:
        fig.legend(
            list(handles.values()),
            [text(a) for a in handles],
            loc="lower center",
            ncol=min(6, len(handles)),
            frameon=False,
        )
    fig.suptitle(
        f"Per-step means with {1 - report.alpha:.0%} bootstrap bands", y=1 - 0.12 / height, va="top"
    )
    return fig


def _xy_err(mean: float, low: float | None, high: float | None) -> tuple[float, float]:
    lo = 0.0 if low is None or not math.isfinite(low) else max(0.0, mean - low)
    hi = 0.0 if high is None or not math.isfinite(high) else max(0.0, high - mean)
    return lo, hi


_OFFSETS = ((8, -13), (8, 5), (-8, 5), (-8, -13))


def frontier_figure(report: AuditReport) -> Figure:
    """Engagement against induced shift per arm, with confidence intervals; the audited
    policy highlighted, penalized learners joined in order of penalty weight."""
    fig = Figure(figsize=(7.5, 5.5))
    info = {a.label: a for a in report.arms}
    colours = arm_colours(report)
    points: dict[str, tuple[float, float]] = {}
    ax = None
    for arm in arm_order(report):
        ms = report.metrics.get(arm, {})
        sx, sy = ms.get("induced_shift"), ms.get("engagement")
        if sx is None or sy is None or sx.mean is None or sy.mean is None:
            continue
        if not (math.isfinite(sx.mean) and math.isfinite(sy.mean)):
            continue
        if ax is None:
            ax = fig.add_subplot()
        x, y = float(sx.mean), float(sy.mean)
        points[arm] = (x, y)
        xe, ye = _xy_err(x, sx.ci_low, sx.ci_high), _xy_err(y, sy.ci_low, sy.ci_high)
        a = info.get(arm)
        oracle = bool(a and a.oracle)
        audited = arm == AUDITED
        ax.errorbar(
            [x],
            [y],
            xerr=[[xe[0]], [xe[1]]],
            yerr=[[ye[0]], [ye[1]]],
            fmt="*" if audited else ("D" if oracle else "o"),
            ms=16 if audited else 8,
            mfc="white" if oracle else colours[arm],
            mec=colours[arm],
            mew=1.8 if oracle else 1.0,
            color=colours[arm],
            elinewidth=1.0,
            capsize=3,
            zorder=4 if audited else 3,
        )
        name = text(arm) + (" (oracle)" if oracle else "")
        if audited and a is not None and a.kind != arm:
            name += f" [{text(a.kind)}]"
        ax.annotate(
            name,
            (x, y),
            xytext=(8, 7) if audited else _OFFSETS[len(points) % len(_OFFSETS)],
            ha="left" if audited or len(points) % len(_OFFSETS) < 2 else "right",
            textcoords="offset points",
            fontsize=9,
            fontweight="bold" if audited else "normal",
            color=colours[arm],
        )
    if ax is None:
        _message(fig, "engagement or induced shift was not measured")
        return fig
    penalized = sorted(
        (
            (float(a.penalty_weight), a.label)
            for a in report.arms
            if a.role == "penalized" and a.penalty_weight is not None and a.label in points
        ),
    )
    if len(penalized) >= 2:
        xs = [points[label][0] for _, label in penalized]
        ys = [points[label][1] for _, label in penalized]
        ax.plot(xs, ys, color="#777777", ls="--", lw=1.2, zorder=1, label="penalized frontier")
        for w, label in penalized:
            ax.annotate(
                f"w={w:g}",
                points[label],
                xytext=(7, -12),
                textcoords="offset points",
                fontsize=7,
                color="#777777",
            )
        ax.legend(loc="best", frameon=False)
    ax.set_xlabel("induced shift (lower is better)")
    ax.set_ylabel("engagement (higher is better)")
    ax.set_title("Engagement against induced preference shift")
    ax.margins(0.15)
    fig.tight_layout()
    return fig


def _matching(criteria: Sequence[CriterionResult], metric: str, ref: str) -> list[CriterionResult]:
    return [c for c in criteria if c.metric == metric and c.reference_arm == ref]


def effects_figure(report: AuditReport) -> Figure:
    """A forest plot per metric: the paired effect against each reference with its
    confidence interval, zero, and the margins of the criteria on that metric/reference."""
    groups: dict[str, list[Any]] = {}
    for e in report.effects:
        groups.setdefault(e.metric, []).append(e)
    heights = [len(v) + 1.2 for v in groups.values()]
    fig = Figure(figsize=(8, 0.9 + 0.42 * sum(heights) if groups else 3))
    if not groups:
        _message(fig, "no paired effects in this report")
        return fig
    axes = fig.subplots(len(groups), 1, squeeze=False, gridspec_kw={"height_ratios": heights})
    margin_seen: set[str] = set()
    for (metric, effects), row in zip(groups.items(), axes, strict=True):
        ax = row[0]
        ys = np.arange(len(effects))[::-1].astype(float)
        for y, e in zip(ys, effects, strict=True):
            if e.mean is not None and math.isfinite(e.mean):
                lo, hi = _xy_err(e.mean, e.ci_low, e.ci_high)
                ax.errorbar(
                    [e.mean],
                    [y],
                    xerr=[[lo], [hi]],
                    fmt="o",
                    color="#24292f",
                    capsize=3,
                    ms=5,
                    zorder=3,
                )
            else:
                ax.text(0.0, y, "  not estimable", va="center", fontsize=8, color="#6e7781")
            for c in _matching(report.criteria, metric, e.reference):
                colour = STATUS_COLOURS.get(c.status, "#6e7781")
                label = f"margin ({c.status})" if c.status not in margin_seen else None
                margin_seen.add(c.status)
                ax.plot([c.margin, c.margin], [y - 0.4, y + 0.4], color=colour, lw=2.2, label=label)
                ax.annotate(
                    text(c.name),
                    (c.margin, y + 0.4),
                    xytext=(3, -2),
                    textcoords="offset points",
                    fontsize=7,
                    color=colour,
                    va="top",
                )
        ax.axvline(0.0, color="#999999", lw=0.8, zorder=1)
        ax.set_yticks(ys)
        ax.set_yticklabels([f"vs {text(e.reference)}" for e in effects])
        ax.set_ylim(-0.7, len(effects) - 0.3)
        ax.set_title(f"{text(metric)}: policy − reference", loc="left")
        ax.margins(x=0.12)
    handles, labels = [], []
    for row in axes:
        h, lab = row[0].get_legend_handles_labels()
        handles += h
        labels += lab
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=len(handles), frameon=False)
    fig.suptitle(f"Paired effects with {1 - report.alpha:.0%} confidence intervals")
    fig.tight_layout(rect=(0, 0.05 if handles else 0, 1, 0.96))
    return fig


FIGURES: dict[str, Callable[[AuditReport], Figure]] = {
    "distributions.png": distributions_figure,
    "curves.png": curves_figure,
    "frontier.png": frontier_figure,
    "effects.png": effects_figure,
}


def make_figures(report: AuditReport) -> dict[str, bytes]:
    """The report's four figures as PNG bytes keyed by file name."""
    out: dict[str, bytes] = {}
    with figure_style():
        for name, build in FIGURES.items():
            out[name] = png(build(report))
    return out
