"""The cross-audit view: every audit recorded in MLflow, one row each, and a
self-contained HTML page that shows how a policy's metrics and verdicts moved between
code versions.

Audits are the parent runs of the ``recaudit-audits`` experiment tagged
``recaudit.audit=true``; their per-arm child runs are left out.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from html import escape
from typing import Any

import pandas as pd

from auditor.tracking import tracking_uri

from .figures import STATUS_COLOURS, figure_style, png
from .report import DASH, fmt, png_data_uri

EXPERIMENT_AUDITS = "recaudit-audits"

#: the columns every history frame has, in order; criterion and metric columns follow
COLUMNS = [
    "started",
    "run_id",
    "audit_id",
    "policy",
    "policy_label",
    "scenario",
    "code_version",
    "fingerprint",
    "verdict",
    "status",
]

#: metrics charted by ``render_history_html`` when present
CHART_METRICS = ("policy/induced_shift", "policy/polarization", "policy/engagement")

CRITERION_PREFIX = "criterion."
_TAGS = {
    "audit_id": "recaudit.audit_id",
    "policy": "recaudit.policy",
    "policy_label": "recaudit.policy_label",
    "scenario": "recaudit.scenario",
    "code_version": "recaudit.code_version",
    "fingerprint": "recaudit.fingerprint",
    "verdict": "recaudit.verdict",
}
_FILTER_VALUE = re.compile(r"^[^'\"`\\\x00-\x1f]{1,256}$")
_VERDICT_RANK = {"pass": 0, "inconclusive": 1, "flag": 2}


def _client() -> Any:
    os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "false"
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri())


def empty_history() -> pd.DataFrame:
    """A history frame without audits (the fixed columns only)."""
    cols: dict[str, pd.Series] = {c: pd.Series(dtype=object) for c in COLUMNS}
    cols["started"] = pd.Series(dtype="datetime64[ns, UTC]")
    return pd.DataFrame(cols)


def _filter(policy: str | None, scenario: str | None) -> str:
    parts = ["tags.`recaudit.audit` = 'true'"]
    for tag, value in (("recaudit.policy", policy), ("recaudit.scenario", scenario)):
        if value is None:
            continue
        if not _FILTER_VALUE.match(value):
            raise ValueError(f"cannot filter audits by {value!r}: quotes are not allowed")
        parts.append(f"tags.`{tag}` = '{value}'")
    return " and ".join(parts)


def _row(run: Any) -> dict[str, Any]:
    tags: dict[str, str] = dict(run.data.tags)
    start = run.info.start_time
    row: dict[str, Any] = {
        "started": pd.Timestamp(start, unit="ms", tz="UTC") if start is not None else pd.NaT,
        "run_id": run.info.run_id,
        "status": run.info.status,
    }
    for col, tag in _TAGS.items():
        row[col] = tags.get(tag)
    for key, value in sorted(tags.items()):
        if key.startswith("recaudit.criterion."):
            row[CRITERION_PREFIX + key.removeprefix("recaudit.criterion.")] = value
    for key, num in sorted(run.data.metrics.items()):
        row[key] = float(num)
    return row


def audit_history(
    policy: str | None = None, scenario: str | None = None, max_results: int = 1000
) -> pd.DataFrame:
    """The latest ``max_results`` audits (of ``policy`` and on ``scenario`` when given), one
    row per audit, oldest first: the fixed :data:`COLUMNS`, then one ``criterion.<name>``
    column per criterion (its status), then every metric logged on the audit run."""
    if max_results < 1:
        raise ValueError("max_results must be at least 1")
    client = _client()
    exp = client.get_experiment_by_name(EXPERIMENT_AUDITS)
    if exp is None:
        return empty_history()
    runs: list[Any] = []
    token: str | None = None
    while len(runs) < max_results:
        page = client.search_runs(
            [exp.experiment_id],
            filter_string=_filter(policy, scenario),
            max_results=min(1000, max_results - len(runs) + 50),
            order_by=["attributes.start_time DESC", "attributes.run_id ASC"],
            page_token=token,
        )
        runs += [r for r in page if "mlflow.parentRunId" not in r.data.tags]
        token = page.token
        if not token:
            break
    rows = [_row(r) for r in runs[:max_results]]
    if not rows:
        return empty_history()
    df = pd.DataFrame(rows[::-1])
    for col in COLUMNS:
        if col not in df:
            df[col] = None
    crit = sorted(c for c in df.columns if c.startswith(CRITERION_PREFIX))
    rest = sorted(c for c in df.columns if c not in COLUMNS and c not in crit)
    df = df[COLUMNS + crit + rest]
    df["started"] = pd.to_datetime(df["started"], utc=True)
    return df.sort_values("started", kind="mergesort").reset_index(drop=True)


def regressions(
    df: pd.DataFrame,
    metric: str = "policy/induced_shift",
    *,
    tolerance: float = 0.0,
    higher_is_worse: bool = True,
) -> pd.DataFrame:
    """Version changes that made things worse: for each policy and scenario, consecutive
    audits with different code versions where ``metric`` worsened by more than
    ``tolerance`` or the verdict got worse (pass < inconclusive < flag)."""
    cols = [
        "policy",
        "scenario",
        "from_version",
        "to_version",
        "from_run_id",
        "to_run_id",
        "from_value",
        "to_value",
        "change",
        "from_verdict",
        "to_verdict",
        "started",
    ]
    out: list[dict[str, Any]] = []
    if df.empty:
        return pd.DataFrame(columns=cols)
    keyed = df.assign(_p=df["policy"].fillna(""), _s=df["scenario"].fillna(""))
    for (pol, scen), group in keyed.groupby(["_p", "_s"], sort=True):
        g = group.sort_values("started", kind="mergesort")
        prev: Any = None
        for _, cur in g.iterrows():
            if prev is not None and cur["code_version"] != prev["code_version"]:
                a = _float(prev.get(metric))
                b = _float(cur.get(metric))
                change = b - a if a is not None and b is not None else None
                worse_metric = change is not None and (
                    change > tolerance if higher_is_worse else -change > tolerance
                )
                ra = _VERDICT_RANK.get(str(prev["verdict"]))
                rb = _VERDICT_RANK.get(str(cur["verdict"]))
                worse_verdict = ra is not None and rb is not None and rb > ra
                if worse_metric or worse_verdict:
                    out.append(
                        {
                            "policy": pol,
                            "scenario": scen,
                            "from_version": prev["code_version"],
                            "to_version": cur["code_version"],
                            "from_run_id": prev["run_id"],
                            "to_run_id": cur["run_id"],
                            "from_value": a,
                            "to_value": b,
                            "change": change,
                            "from_verdict": prev["verdict"],
                            "to_verdict": cur["verdict"],
                            "started": cur["started"],
                        }
                    )
            prev = cur
    return pd.DataFrame(out, columns=cols)


def _float(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


# --------------------------------------------------------------------------- rendering
def history_chart(df: pd.DataFrame, metrics: Sequence[str] = CHART_METRICS) -> bytes | None:
    """PNG of the charted metrics against time: one line per policy and scenario, points
    coloured by verdict, labelled with the code version where it changes. None when no
    charted metric has a value."""
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter, date2num
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    present = [m for m in metrics if m in df.columns and df[m].map(_float).notna().any()]
    if df.empty or not present:
        return None
    with figure_style():
        fig = Figure(figsize=(10, 2.9 * len(present) + 0.8), layout="constrained")
        axes = fig.subplots(len(present), 1, squeeze=False, sharex=True)
        times = [
            t.tz_convert("UTC").tz_localize(None).to_pydatetime() if not pd.isna(t) else None
            for t in df["started"]
        ]
        xs_all = [date2num(t) for t in times if t is not None]
        for row, metric in zip(axes, present, strict=True):
            ax = row[0]
            groups: dict[tuple[str, str], list[int]] = {}
            for i in range(len(df)):
                key = (str(df["policy"].iloc[i]), str(df["scenario"].iloc[i]))
                groups.setdefault(key, []).append(i)
            for (pol, scen), idx in sorted(groups.items()):
                pts = [
                    (date2num(times[i]), v, i)
                    for i in idx
                    if times[i] is not None and (v := _float(df[metric].iloc[i])) is not None
                ]
                if not pts:
                    continue
                xs = [p[0] for p in pts]
                ys = [p[1] for p in pts]
                ax.plot(xs, ys, color="#8c959f", lw=1.0, zorder=1)
                if len(groups) > 1:
                    ax.annotate(
                        f"{pol} on {scen}".replace("$", r"\$"),
                        (xs[-1], ys[-1]),
                        xytext=(6, 0),
                        textcoords="offset points",
                        fontsize=7,
                        color="#57606a",
                        va="center",
                    )
                last_version: object = object()
                for x, y, i in pts:
                    verdict = str(df["verdict"].iloc[i])
                    ax.scatter(
                        [x],
                        [y],
                        color=STATUS_COLOURS.get(verdict, "#6e7781"),
                        s=36,
                        zorder=3,
                        edgecolors="white",
                        linewidths=0.5,
                    )
                    version = df["code_version"].iloc[i]
                    if version != last_version:
                        ax.annotate(
                            str(version).replace("$", r"\$"),
                            (x, y),
                            xytext=(0, 8),
                            textcoords="offset points",
                            fontsize=7,
                            ha="center",
                            rotation=20,
                        )
                        last_version = version
            ax.set_ylabel(metric)
            ax.margins(y=0.25)
        ax0 = axes[-1][0]
        locator = AutoDateLocator()
        ax0.xaxis.set_major_locator(locator)
        ax0.xaxis.set_major_formatter(ConciseDateFormatter(locator))
        if xs_all and max(xs_all) - min(xs_all) < 1 / 24:
            mid = (max(xs_all) + min(xs_all)) / 2
            ax0.set_xlim(mid - 1 / 24, mid + 1 / 24)
        else:
            ax0.margins(x=0.08)
        ax0.set_xlabel("audit start (UTC)")
        proxies = [
            Line2D([], [], ls="", marker="o", color=STATUS_COLOURS[v], label=v)
            for v in ("pass", "inconclusive", "flag")
        ]
        fig.legend(handles=proxies, loc="outside lower center", ncol=3, frameon=False)
        fig.suptitle("Audited policy's metrics across audits (labels: code version)")
        return png(fig)


def _cell(df: pd.DataFrame, col: str, i: int) -> str:
    v = df[col].iloc[i]
    if col == "started":
        return DASH if pd.isna(v) else v.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(v, str):
        return v
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return DASH
    if isinstance(v, int | float):
        return fmt(float(v))
    return str(v)


def render_history_html(df: pd.DataFrame, title: str) -> str:
    """A self-contained page: the chart of the audited policy's metrics over time and a
    table of every audit (fixed columns, criteria, policy metrics, effects with CIs)."""
    e = escape
    crit = [c for c in df.columns if c.startswith(CRITERION_PREFIX)]
    pol = [c for c in df.columns if c.startswith("policy/")]
    eff = [
        c for c in df.columns if c.startswith("effect/") and not c.endswith(("/ci_low", "/ci_high"))
    ]
    shown = [c for c in COLUMNS if c in df.columns] + crit + pol + eff
    chart = history_chart(df)
    parts = [
        "<!DOCTYPE html>",
        "<html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>{e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{e(title)}</h1>",
    ]
    if df.empty:
        parts.append("<p>No audits recorded.</p></body></html>")
        return "\n".join(parts) + "\n"
    counts = df["verdict"].fillna("none").value_counts()
    parts.append(
        "<p class='sub'>"
        + e(f"{len(df)} audits; ")
        + ", ".join(
            f"<span style='color:{STATUS_COLOURS.get(str(k), '#6e7781')}'>"
            f"{e(str(k))}: {int(n)}</span>"
            for k, n in sorted(counts.items())
        )
        + "</p>"
    )
    if chart is not None:
        parts.append(
            f"<figure><img src='{png_data_uri(chart)}' alt='metrics over time'>"
            "<figcaption>The audited policy's metrics per audit, coloured by verdict and "
            "labelled with the code version where it changes.</figcaption></figure>"
        )
    head = "".join(f"<th>{e(c)}</th>" for c in shown)
    body = []
    for i in range(len(df)):
        cells = []
        for c in shown:
            text = _cell(df, c, i)
            if c in eff:
                lo, hi = f"{c}/ci_low", f"{c}/ci_high"
                if lo in df.columns and hi in df.columns:
                    lo_s, hi_s = _cell(df, lo, i), _cell(df, hi, i)
                    if (lo_s, hi_s) != (DASH, DASH):
                        text += f" [{lo_s}, {hi_s}]"
            style = ""
            if c == "verdict" or c.startswith(CRITERION_PREFIX):
                colour = STATUS_COLOURS.get(text)
                style = f" style='color:{colour};font-weight:700'" if colour else ""
            cells.append(f"<td{style}>{e(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    parts.append(
        "<div class='scroll'><table><thead><tr>"
        + head
        + "</tr></thead><tbody>"
        + "".join(body)
        + "</tbody></table></div>"
    )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
margin:0 auto;max-width:1400px;padding:1.5rem;color:#24292f}
h1{font-size:1.5rem}.sub{color:#57606a}
table{border-collapse:collapse;font-size:.82rem}
th,td{border:1px solid #d0d7de;padding:.2rem .45rem;text-align:left;white-space:nowrap}
th{background:#f6f8fa}.scroll{overflow-x:auto}
figure{margin:1rem 0}figure img{max-width:100%;height:auto}
figcaption{color:#57606a;font-size:.85rem}
"""
