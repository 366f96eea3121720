"""The HTML audit report: one self-contained page rendered from an
:class:`~auditor.report.AuditReport` and its figures (no scripts, no external resources;
images are embedded as ``data:`` URIs), and ``write_report``, which writes the JSON, the
page and the figures atomically.
"""

from __future__ import annotations

import base64
import math
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from html import escape
from pathlib import Path

from auditor.report import AuditReport, MetricSummary
from auditor.spec import METRICS

from .figures import STATUS_COLOURS, arm_order, make_figures
from .fit import render_fit, scenario_fit

DASH = "–"

CAPTIONS: dict[str, str] = {
    "distributions.png": (
        "Users' positions on the polarity axis at each checkpoint, pooled over replicates. "
        "Left: share of users per bin over time (one colour scale for every arm). Right: "
        "the first and last checkpoints, with the natural counterfactual's last one dashed."
    ),
    "curves.png": (
        "Per-step means over replicates with pointwise bootstrap bands, one line per arm."
    ),
    "frontier.png": (
        "Engagement against induced shift (distance from the same users' natural "
        "counterfactual) with confidence intervals. The audited policy is the star; "
        "penalized learners are joined in order of penalty weight; hollow diamonds read "
        "true preferences (oracles)."
    ),
    "effects.png": (
        "Paired effects policy − reference with confidence intervals; coloured bars are the "
        "criteria's margins on that metric and reference."
    ),
}

_FIGURE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
margin:0 auto;max-width:1200px;padding:1.5rem;color:#24292f;line-height:1.45}
h1{margin:.2rem 0 .3rem;font-size:1.6rem}h2{margin-top:2rem;border-bottom:1px solid #d0d7de;
padding-bottom:.2rem;font-size:1.25rem}
.sub{color:#57606a;margin:0 0 1rem}
.verdict{display:inline-block;font-size:2.2rem;font-weight:700;letter-spacing:.05em;
padding:.35rem 1.2rem;border-radius:.5rem;color:#fff;text-transform:uppercase}
table{border-collapse:collapse;margin:.5rem 0 1rem;font-size:.88rem}
th,td{border:1px solid #d0d7de;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f6f8fa}td.num{text-align:right;font-variant-numeric:tabular-nums;
white-space:nowrap}
.status{font-weight:700;text-transform:uppercase}
.scroll{overflow-x:auto}
figure{margin:1rem 0 2rem}figure img{max-width:100%;height:auto;border:1px solid #eaeef2}
figcaption{color:#57606a;font-size:.88rem;margin-top:.3rem}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.2rem 1rem;font-size:.88rem}
dt{font-weight:600}dd{margin:0;word-break:break-all}
code{font-size:.85rem}
"""


# --------------------------------------------------------------------------- formatting
def fmt(x: float | int | None, digits: int = 4) -> str:
    """A number with ``digits`` significant digits; None and non-finite values as a dash."""
    if x is None:
        return DASH
    if isinstance(x, bool):
        return str(x).lower()
    if isinstance(x, int):
        return str(x)
    if not math.isfinite(x):
        return DASH
    return f"{x:.{digits}g}"


def fmt_ci(low: float | None, high: float | None) -> str:
    if low is None and high is None:
        return DASH
    return f"[{fmt(low)}, {fmt(high)}]"


def fmt_summary(s: MetricSummary | None) -> str:
    """``mean [low, high]`` or the mean alone when there is no interval."""
    if s is None:
        return DASH
    ci = fmt_ci(s.ci_low, s.ci_high)
    return fmt(s.mean) if ci == DASH else f"{fmt(s.mean)} {ci}"


def _e(x: object) -> str:
    return escape(str(x), quote=True)


def _status(status: str) -> str:
    colour = STATUS_COLOURS.get(status, "#6e7781")
    return f'<span class="status" style="color:{colour}">{_e(status)}</span>'


def _table(head: Iterable[str], rows: Iterable[Iterable[str]], num: Iterable[int] = ()) -> str:
    """A table from escaped cells (``num``: right-aligned column indexes)."""
    right = set(num)
    out = ["<div class='scroll'><table><thead><tr>"]
    out += [f"<th>{_e(h)}</th>" for h in head]
    out.append("</tr></thead><tbody>")
    for row in rows:
        out.append("<tr>")
        for i, cell in enumerate(row):
            out.append(f"<td class='num'>{cell}</td>" if i in right else f"<td>{cell}</td>")
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def png_data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _figure_order(figures: Mapping[str, bytes]) -> list[str]:
    known = [n for n in CAPTIONS if n in figures]
    return known + sorted(n for n in figures if n not in CAPTIONS)


# --------------------------------------------------------------------------- sections
def _criteria(report: AuditReport) -> str:
    if not report.criteria:
        return "<p>No criteria.</p>"
    rows = [
        [
            f"<strong>{_e(c.name)}</strong>"
            + (f"<br><small>{_e(c.description)}</small>" if c.description else ""),
            _e(c.metric),
            _e(c.reference_arm or DASH)
            + (f" <small>({_e(c.reference)})</small>" if c.reference != c.reference_arm else ""),
            _e(fmt(c.margin)),
            _e(fmt(c.estimate)),
            _e(fmt_ci(c.lower, c.upper)),
            _e(fmt(c.level)),
            _e(fmt(c.mde)),
            _e(c.analysis or DASH)
            + (f"<br><small>{_e(c.analysis_reason)}</small>" if c.analysis_reason else ""),
            _status(c.status),
            _e(c.explanation),
        ]
        for c in report.criteria
    ]
    head = ["criterion", "metric", "reference arm", "margin", "estimate", "[lower, upper]"]
    head += ["level", "detectable", "analysis", "status", "explanation"]
    return _table(head, rows, num=(3, 4, 5, 6, 7))


def _effects(report: AuditReport) -> str:
    if not report.effects:
        return "<p>No paired effects.</p>"
    rows = [
        [
            _e(e.metric),
            _e(e.reference),
            _e(fmt(e.mean)),
            _e(fmt_ci(e.ci_low, e.ci_high)),
            _e(fmt(e.effect_size)),
            _e(e.analysis or DASH),
        ]
        for e in report.effects
    ]
    head = ["metric", "reference", "mean (policy − reference)", "CI", "effect size d_z"]
    head += ["analysis"]
    return _table(head, rows, num=(2, 3, 4))


def _arms(report: AuditReport) -> str:
    rows = []
    for a in report.arms:
        params = ", ".join(f"{k}={v}" for k, v in sorted(a.params.items()))
        rows.append(
            [
                f"<strong>{_e(a.label)}</strong>",
                _e(a.kind),
                _e(a.role),
                _e(params or DASH),
                _e(fmt(a.penalty_weight)),
                "yes" if a.oracle else "no",
                f"<code>{_e(a.trained_run_id)}</code>" if a.trained_run_id else DASH,
            ]
        )
    head = ["arm", "kind", "role", "parameters", "penalty weight", "oracle", "trained run"]
    return _table(head, rows, num=(4,))


def boundary_lines(report: AuditReport) -> list[str]:
    """One sentence per arm whose policy crossed the boundary by ids (uploaded models,
    remote endpoints): the counts and the stated rule."""
    out = []
    for a in report.arms:
        b = a.boundary
        if b is None:
            continue
        items = f"{b.catalog_items} catalog items"
        if b.model_items is not None:
            items += (
                f" matched by id to the model's {b.model_items} ({b.unknown_items} unknown, "
                f"{b.model_items_outside_catalog} of the model's not in the catalog)"
            )
        users = f"{b.users} users per replicate"
        if b.model_users is not None:
            cold = ", ".join(str(c) for c in b.cold_users)
            users += f", the model knows {b.model_users}; cold-start users per replicate: {cold}"
        out.append(f"{a.label} ({b.kind or a.kind}): {items}; {users}. Rule: {b.rule}.")
    return out


def _boundary(report: AuditReport) -> str:
    rows = []
    for a in report.arms:
        b = a.boundary
        if b is None:
            continue
        ids = ", ".join(b.model_item_examples)
        users = ", ".join(b.model_user_examples)
        rows.append(
            [
                f"<strong>{_e(a.label)}</strong>",
                _e(b.kind or a.kind),
                _e(f"{b.catalog_items}"),
                _e(DASH if b.model_items is None else f"{b.model_items}"),
                _e(f"{b.unknown_items}"),
                _e(
                    DASH
                    if b.model_items_outside_catalog is None
                    else f"{b.model_items_outside_catalog}"
                ),
                _e(f"{b.users}"),
                _e(DASH if b.model_users is None else f"{b.model_users}"),
                _e(", ".join(str(c) for c in b.cold_users) or DASH),
                _e(
                    (f"model item ids {ids}, ...; " if ids else "")
                    + (f"user ids {users}, ...; " if users else "")
                    + b.rule
                ),
            ]
        )
    head = [
        "arm",
        "model or protocol",
        "catalog items",
        "model items",
        "unknown items",
        "model items not in catalog",
        "users",
        "model users",
        "cold-start users (per replicate)",
        "ids and rule",
    ]
    return _table(head, rows, num=range(2, 9))


def _metrics(report: AuditReport) -> str:
    arms = [a for a in arm_order(report) if a in report.metrics]
    # the report's own order (the registry's; an axis-free scenario's leads with the
    # axis-free metrics)
    names = list(dict.fromkeys(m for per_arm in report.metrics.values() for m in per_arm))
    if not arms or not names:
        return "<p>No metrics.</p>"
    rows = []
    for m in names:
        desc = report.metric_descriptions.get(m) or METRICS.get(m, "")
        cell = f"<strong>{_e(m)}</strong>" + (f"<br><small>{_e(desc)}</small>" if desc else "")
        rows.append([cell] + [_e(fmt_summary(report.metrics[a].get(m))) for a in arms])
    return _table(["metric", *arms], rows, num=range(1, len(arms) + 1))


def _figures(figures: Mapping[str, bytes]) -> str:
    out = []
    for name in _figure_order(figures):
        caption = CAPTIONS.get(name, name)
        out.append(
            f"<figure id='fig-{_e(name)}'><img src='{png_data_uri(figures[name])}' "
            f"alt='{_e(name)}'><figcaption><strong>{_e(name)}</strong>: {_e(caption)}"
            "</figcaption></figure>"
        )
    return "".join(out) or "<p>No figures.</p>"


def _provenance(report: AuditReport) -> str:
    p = report.provenance
    t = p.timings
    items: list[tuple[str, str]] = [
        ("audit id", f"<code>{_e(report.id)}</code>"),
        ("fingerprint", f"<code>{_e(p.fingerprint)}</code>"),
        ("scenario", _e(p.scenario_id)),
        ("scenario fingerprint", f"<code>{_e(p.scenario_fingerprint)}</code>"),
        ("seeds", _e(", ".join(str(s) for s in p.seeds))),
        ("code version", _e(p.code_version)),
        ("git commit", f"<code>{_e(p.git_commit)}</code>" if p.git_commit else DASH),
        (
            "packages",
            _e(", ".join(f"{k} {v}" for k, v in sorted(p.packages.items())) or DASH),
        ),
        ("executor", _e(p.executor)),
        ("host", _e(p.host or DASH)),
        ("created (UTC)", _e(p.created)),
        (
            "timings (s)",
            _e(
                f"total {fmt(t.total_s)}; train {fmt(t.train_s)}, simulate {fmt(t.simulate_s)}, "
                f"analyse {fmt(t.analyse_s)}, log {fmt(t.log_s)}"
            ),
        ),
        ("MLflow tracking store", f"<code>{_e(p.tracking_uri)}</code>" if p.tracking_uri else DASH),
        ("MLflow experiment", _e(p.mlflow_experiment_id or DASH)),
        (
            "MLflow run id",
            f"<code>{_e(p.mlflow_run_id)}</code>" if p.mlflow_run_id else DASH,
        ),
        ("report schema", _e(report.schema_)),
    ]
    return "<dl>" + "".join(f"<dt>{_e(k)}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"


def render_html(report: AuditReport, figures: Mapping[str, bytes]) -> str:
    """The audit report as one self-contained HTML page."""
    policy = report.spec.policy
    scenario = report.provenance.scenario_id
    title = f"Audit of {policy.kind} on {scenario}"
    colour = STATUS_COLOURS.get(report.verdict, "#6e7781")
    spec = report.spec
    sub = (
        f"audit {report.id} · {report.users} users × {report.steps} steps × "
        f"{spec.replicates} replicates · alpha {fmt(report.alpha)} · {report.provenance.created}"
    )
    if policy.params:
        sub += " · parameters " + ", ".join(f"{k}={v}" for k, v in sorted(policy.params.items()))
    parts = [
        "<!DOCTYPE html>",
        "<html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f"<p class='sub'>{_e(sub)}</p>",
        f"<div class='verdict' id='verdict' style='background:{colour}'>{_e(report.verdict)}</div>",
        f"<p class='summary'>{_e(report.summary)}</p>",
        "<h2>Criteria</h2>",
        "<p>The verdict's tests, with a Bonferroni correction over the criteria. "
        "<em>detectable</em>: the distance from the margin this design detects with 80% "
        "power.</p>",
        _criteria(report),
        "<h2>Figures</h2>",
        _figures(figures),
        "<h2 id='descriptive'>Descriptive effects</h2>",
        "<details><summary>Paired effects of every reported metric against every "
        f"reference, with two-sided {_e(fmt(100 * (1 - report.alpha)))}% intervals and no "
        "multiplicity correction. Descriptive: the verdict rests on the criteria "
        "alone.</summary>",
        _effects(report),
        "</details>",
        "<h2>Arms</h2>",
        _arms(report),
        *(
            ["<h2 id='ids'>Ids at the boundary</h2>", _boundary(report)]
            if any(a.boundary is not None for a in report.arms)
            else []
        ),
        "<h2>Metrics per arm</h2>",
        f"<p>Mean over replicates [{_e(fmt(100 * (1 - report.alpha)))}% bootstrap interval].</p>",
        _metrics(report),
        render_fit(scenario_fit(report.spec.scenario_spec())),
        "<h2>Provenance</h2>",
        _provenance(report),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


# --------------------------------------------------------------------------- writing
def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_report(
    report: AuditReport, out_dir: Path, figures: Mapping[str, bytes] | None = None
) -> dict[str, Path]:
    """Write ``report.json``, ``report.html`` and ``figures/<name>.png`` under ``out_dir``
    (created). Figures are made from the report unless given. Returns the paths by name:
    ``json``, ``html`` and each figure's name."""
    figs = dict(make_figures(report) if figures is None else figures)
    for name in figs:
        if not _FIGURE_NAME.match(name) or ".." in name or name in ("json", "html"):
            raise ValueError(f"invalid figure name {name!r}")
    out_dir = Path(out_dir)
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name, data in figs.items():
        path = fig_dir / (name if name.endswith(".png") else f"{name}.png")
        write_atomic(path, data)
        paths[name] = path
    paths["json"] = out_dir / "report.json"
    write_atomic(paths["json"], report.to_json().encode("utf-8"))
    paths["html"] = out_dir / "report.html"
    write_atomic(paths["html"], render_html(report, figs).encode("utf-8"))
    return paths
