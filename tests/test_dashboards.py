"""Dashboards: the report's figures, the self-contained HTML report, writing it to disk,
and the cross-audit history read back from a real MLflow store."""

from __future__ import annotations

import base64
import math
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pytest

from auditor.report import AuditReport, Curve, Distribution
from dashboards import figures as F
from dashboards.history import (
    COLUMNS,
    EXPERIMENT_AUDITS,
    audit_history,
    regressions,
    render_history_html,
)
from dashboards.report import fmt, render_html, write_report
from tests.report_sample import sample_report

PNG = b"\x89PNG\r\n\x1a\n"
NAMES = {"distributions.png", "curves.png", "frontier.png", "effects.png"}
SMALL = ["policy", "natural", "ppo"]  # fewer arms: faster figures


@pytest.fixture(scope="module")
def report() -> AuditReport:
    return sample_report()


@pytest.fixture(scope="module")
def figs(report: AuditReport) -> dict[str, bytes]:
    return F.make_figures(report)


def _self_contained(html: str) -> None:
    assert "http://" not in html and "https://" not in html
    assert "<script" not in html.lower() and "<link" not in html.lower()
    assert "@import" not in html and "url(" not in html
    for attr in re.findall(r"""(?:src|href)\s*=\s*['"]([^'"]*)""", html, flags=re.I):
        assert attr.startswith("data:image/png;base64,"), attr


def _images(html: str) -> list[bytes]:
    return [
        base64.b64decode(b64, validate=True)
        for b64 in re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", html)
    ]


# --------------------------------------------------------------------------- figures
def test_figures_are_pngs_and_byte_identical_across_calls(
    report: AuditReport, figs: dict[str, bytes]
) -> None:
    assert set(figs) == NAMES
    for data in figs.values():
        assert data.startswith(PNG) and len(data) > 5000
    # the user's rcParams neither change the bytes nor are changed by rendering
    with matplotlib.rc_context({"lines.linewidth": 5.0, "font.size": 20.0}):
        assert F.make_figures(report) == figs
        assert matplotlib.rcParams["lines.linewidth"] == 5.0
    if "matplotlib.pyplot" in sys.modules:  # no pyplot figures are left open
        assert not sys.modules["matplotlib.pyplot"].get_fignums()
    other = sample_report(extra_arm="random")
    with F.figure_style():
        assert F.png(F.frontier_figure(other)) != figs["frontier.png"]  # drawn from the data


def _without(report: AuditReport, **update: Any) -> AuditReport:
    return report.model_copy(update=update)


@pytest.mark.parametrize("case", ["nones", "single-arm", "one-step", "nothing", "odd-values"])
def test_figures_survive_degenerate_reports(case: str) -> None:
    if case == "nones":
        r = sample_report(with_nones=True, arms=SMALL)
    elif case == "single-arm":
        r = sample_report(arms=["policy"])
    elif case == "one-step":
        r = sample_report(steps=1, checkpoints=1, arms=SMALL)
    elif case == "nothing":
        r = _without(
            sample_report(),
            metrics={},
            curves={},
            distributions={},
            effects=[],
            criteria=[],
            arms=[],
        )
    else:  # a mathtext-looking label, a malformed distribution and curve, NaN and inf
        r = sample_report(extra_arm="a$\\frac{1}{0}$", arms=SMALL)
        bad = Distribution(steps=[0, 5], bin_edges=[-1.0, 0.0, 1.0], density=[[0.5, 0.5]])
        short = Curve(steps=[0, 1, 2], mean=[0.1], low=[], high=[])
        m = dict(r.metrics)
        m["ppo"] = {
            **m["ppo"],
            "engagement": m["ppo"]["engagement"].model_copy(
                update={"mean": math.nan, "ci_low": math.inf}
            ),
        }
        r = _without(
            r,
            metrics=m,
            distributions={**r.distributions, "ppo": bad},
            curves={**r.curves, "ppo": {**r.curves["ppo"], "shift": short}},
        )
    out = F.make_figures(r)
    assert set(out) == NAMES and all(v.startswith(PNG) for v in out.values())
    html = render_html(r, out)
    _self_contained(html)
    assert len(_images(html)) == 4


def test_distributions_put_natural_first_on_one_colour_scale(report: AuditReport) -> None:
    with F.figure_style():
        fig = F.distributions_figure(report)
    heat = [ax for ax in fig.axes if ax.collections and ax.get_ylabel().endswith("position")]
    labels = [ax.get_ylabel().split("\n")[0] for ax in heat]
    assert labels == ["natural", "policy", "ppo-myopic", "ppo", "ppo-distance"]
    limits = {ax.collections[0].get_clim() for ax in heat}
    assert len(limits) == 1  # every arm is drawn on the same scale
    vmax = max(max(row) for d in report.distributions.values() for row in d.density)
    assert limits.pop() == pytest.approx((0.0, vmax))
    # each non-natural arm's histogram panel carries natural's last checkpoint (dashed)
    nat_last = report.distributions["natural"].density[-1]
    hist = [
        ax for ax in fig.axes if ax.get_ylabel() == "share of users" and ax.get_title(loc="left")
    ]
    assert len(hist) == 5
    for ax in hist[1:]:
        dashed = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
        assert len(dashed) == 1 and np.allclose(dashed[0].get_ydata(), nat_last)


def test_curves_draw_every_metric_with_gaps_for_nones() -> None:
    r = sample_report(with_nones=True)
    with F.figure_style():
        fig = F.curves_figure(r)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["polarization", "shift", "induced_shift", "engagement", "extreme_share"]
    ax = fig.axes[0]
    policy = next(ln for ln in ax.get_lines() if ln.get_label() == "policy")
    y = np.asarray(policy.get_ydata(), dtype=float)
    want = [math.nan if v is None else v for v in r.curves["policy"]["polarization"].mean]
    assert np.allclose(y, want, equal_nan=True) and math.isnan(y[1])
    assert len(ax.collections) == len(r.arms)  # one band per arm


def test_frontier_joins_penalized_arms_by_weight_and_skips_missing() -> None:
    r = sample_report(extra_arm="ppo-distance-0.3", extra_role="penalized", extra_weight=0.3)
    with F.figure_style():
        fig = F.frontier_figure(r)
    ax = fig.axes[0]
    line = next(ln for ln in ax.get_lines() if ln.get_label() == "penalized frontier")
    want = [
        (r.metrics[a]["induced_shift"].mean, r.metrics[a]["engagement"].mean)
        for a in ("ppo-distance-0.3", "ppo-distance")  # weights 0.3 then 1.0
    ]
    assert list(zip(line.get_xdata(), line.get_ydata(), strict=True)) == want
    texts = [t.get_text() for t in ax.texts]
    assert "policy [ppo]" in texts  # the audited arm, with its kind
    assert "ppo-distance (oracle)" in texts
    # one penalized arm: no frontier; an arm without engagement: no point
    r1 = sample_report(with_nones=True)
    with F.figure_style():
        ax1 = F.frontier_figure(r1).axes[0]
    assert not [ln for ln in ax1.get_lines() if ln.get_label() == "penalized frontier"]
    assert "ppo" not in [t.get_text() for t in ax1.texts]


def test_effects_draw_the_criteria_margins_where_they_apply(report: AuditReport) -> None:
    with F.figure_style():
        fig = F.effects_figure(report)
    titles = [ax.get_title(loc="left") for ax in fig.axes]
    metrics = list(dict.fromkeys(e.metric for e in report.effects))
    assert titles == [f"{m}: policy − reference" for m in metrics]
    for c in report.criteria:
        ax = fig.axes[metrics.index(c.metric)]
        names = [t.get_text() for t in ax.texts]
        assert c.name in names
        margin = [ln for ln in ax.get_lines() if list(ln.get_xdata()) == [c.margin, c.margin]]
        assert len(margin) == 1
        assert margin[0].get_color() == F.STATUS_COLOURS[c.status]
    assert "induced-shift-vs-myopic" not in [t.get_text() for t in fig.axes[1].texts]


# --------------------------------------------------------------------------- HTML report
def test_html_is_self_contained_and_embeds_each_figure(
    report: AuditReport, figs: dict[str, bytes]
) -> None:
    html = render_html(report, figs)
    _self_contained(html)
    images = _images(html)
    assert len(images) == 4
    assert all(img.startswith(PNG) for img in images)
    assert sorted(images) == sorted(figs.values())
    for name in NAMES:
        assert f"<strong>{name}</strong>:" in html  # captioned


def test_html_shows_verdict_criteria_tables_and_provenance(
    report: AuditReport, figs: dict[str, bytes]
) -> None:
    html = render_html(report, figs)
    assert "<title>Audit of ppo on polarity-1d-v1</title>" in html
    verdict = re.search(
        r"<div class='verdict' id='verdict' style='background:([^']+)'>(\w+)<", html
    )
    assert verdict and verdict.groups() == (F.STATUS_COLOURS["flag"], "flag")
    assert "so the audit flags it." in html
    statuses = [c.status for c in report.criteria]
    assert set(statuses) >= {"flag", "pass"}
    for c in report.criteria:
        row = html.split(f"<strong>{c.name}</strong>", 1)[1].split("</tr>", 1)[0]
        assert f">{c.status}</span>" in row
        assert f">{fmt(c.estimate)}<" in row and f"[{fmt(c.lower)}, {fmt(c.upper)}]" in row
    e = report.effects[0]
    assert f"<td>{e.metric}</td><td>{e.reference}</td><td class='num'>{fmt(e.mean)}</td>" in html
    m = report.metrics["ppo-myopic"]["engagement"]
    assert f"{fmt(m.mean)} [{fmt(m.ci_low)}, {fmt(m.ci_high)}]" in html
    p = report.provenance
    for needle in (p.fingerprint, p.scenario_fingerprint, p.code_version, "torch 2.4.0"):
        assert needle in html
    assert p.mlflow_run_id and p.mlflow_run_id in html
    assert "0, 1, 2, 3" in html and "total 12.5" in html


def test_html_escapes_labels_and_renders_nones() -> None:
    r = sample_report(
        policy_kind="<script>alert(1)</script>",
        extra_arm="<img src=x onerror=alert(2)>",
        with_nones=True,
        arms=SMALL,
    )
    html = render_html(r, F.make_figures(r))
    _self_contained(html)
    assert "<script>alert(1)</script>" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(2)&gt;" in html
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", html)
    assert "–" in text and not re.search(r"\b(None|nan|inf)\b", text, flags=re.I)


def test_number_formatting() -> None:
    assert fmt(None) == "–" and fmt(math.nan) == "–" and fmt(math.inf) == "–"
    assert fmt(0.123456) == "0.1235" and fmt(12345.678) == "1.235e+04" and fmt(3) == "3"
    assert fmt(-0.000123456) == "-0.0001235" and fmt(True) == "true"


def test_write_report_writes_everything_atomically(
    tmp_path: Path, report: AuditReport, figs: dict[str, bytes]
) -> None:
    out = tmp_path / "a" / "b"
    paths = write_report(report, out, figs)
    assert set(paths) == {"json", "html", *NAMES}
    assert paths["json"] == out / "report.json" and paths["html"] == out / "report.html"
    back = AuditReport.model_validate_json(paths["json"].read_text())
    assert back == report
    assert paths["html"].read_text() == render_html(report, figs)
    for name in NAMES:
        assert paths[name] == out / "figures" / name
        assert paths[name].read_bytes() == figs[name]
    leftovers = [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers
    # rewriting replaces in place; figures default to make_figures(report)
    paths2 = write_report(report, out)
    assert paths2 == paths and paths["distributions.png"].read_bytes() == figs["distributions.png"]
    with pytest.raises(ValueError):
        write_report(report, tmp_path / "c", {"../evil.png": PNG})


# --------------------------------------------------------------------------- history
AUDITS = [
    # (policy, code_version, start ms, verdict, induced_shift, polarization, engagement)
    ("ppo", "0.1.0+gaaa", 1_700_000_000_000, "pass", 0.05, 0.12, 0.40),
    ("random", "0.1.0+gaaa", 1_700_000_100_000, "pass", 0.01, 0.11, 0.10),
    ("ppo", "0.1.1+gbbb", 1_700_003_600_000, "flag", 0.31, 0.21, 0.52),
    ("ppo", "0.1.2+gccc", 1_700_007_200_000, "inconclusive", 0.15, 0.16, 0.47),
]


def _log_audit(client: Any, exp: str, i: int, audit: tuple[Any, ...]) -> tuple[str, list[str]]:
    from mlflow.entities import Metric

    policy, version, start, verdict, shift, pol, eng = audit
    tags = {
        "recaudit.audit": "true",
        "recaudit.audit_id": f"audit-{i}",
        "recaudit.policy": policy,
        "recaudit.policy_label": "policy",
        "recaudit.scenario": "polarity-1d-v1",
        "recaudit.fingerprint": f"{i:064x}",
        "recaudit.code_version": version,
        "recaudit.verdict": verdict,
        "recaudit.criterion.induced-shift-vs-myopic": verdict,
    }
    run_id = client.create_run(exp, start_time=start, tags=tags).info.run_id
    values = {
        "policy/induced_shift": shift,
        "policy/polarization": pol,
        "policy/engagement": eng,
        "natural/polarization": 0.1,
        "effect/induced_shift/natural": shift,
        "effect/induced_shift/natural/ci_low": shift - 0.02,
        "effect/induced_shift/natural/ci_high": shift + 0.02,
    }
    client.log_batch(run_id, metrics=[Metric(k, v, start, 0) for k, v in values.items()])
    children = []
    for arm in ("policy", "natural"):
        # children even carry the audit tags: only the parent link tells them apart
        child = client.create_run(
            exp,
            start_time=start + 1000,
            tags={**tags, "mlflow.parentRunId": run_id, "recaudit.arm": arm},
        )
        client.log_metric(child.info.run_id, "induced_shift", 9.0)
        client.set_terminated(child.info.run_id, "FINISHED")
        children.append(child.info.run_id)
    client.set_terminated(run_id, "FINISHED", end_time=start + 60_000)
    return run_id, children


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    home = tmp_path_factory.mktemp("recaudit-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RECAUDIT_HOME", str(home))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        from mlflow.tracking import MlflowClient

        from auditor.tracking import tracking_uri

        empty = audit_history()  # the store exists, the experiment does not yet
        client = MlflowClient(tracking_uri=tracking_uri())
        exp = client.create_experiment(EXPERIMENT_AUDITS)
        # logged out of time order: history sorts by start time
        order = [2, 0, 3, 1]
        ids: dict[int, str] = {}
        children: list[str] = []
        for i in order:
            ids[i], kids = _log_audit(client, exp, i, AUDITS[i])
            children += kids
        yield {"home": home, "empty": empty, "ids": ids, "children": children}


def test_history_without_the_experiment_is_empty(store: dict[str, Any]) -> None:
    empty = store["empty"]
    assert empty.empty and list(empty.columns) == COLUMNS
    assert str(empty["started"].dtype) == "datetime64[ns, UTC]"


def test_history_lists_the_policy_audits_oldest_first_without_children(
    store: dict[str, Any],
) -> None:
    df = audit_history(policy="ppo")
    want = [i for i, a in enumerate(AUDITS) if a[0] == "ppo"]
    assert list(df["run_id"]) == [store["ids"][i] for i in want]
    assert not set(df["run_id"]) & set(store["children"])
    assert list(df.columns[: len(COLUMNS)]) == COLUMNS
    assert list(df["code_version"]) == [AUDITS[i][1] for i in want]
    assert list(df["verdict"]) == [AUDITS[i][3] for i in want]
    assert list(df["criterion.induced-shift-vs-myopic"]) == [AUDITS[i][3] for i in want]
    assert list(df["audit_id"]) == [f"audit-{i}" for i in want]
    assert set(df["policy"]) == {"ppo"} and set(df["scenario"]) == {"polarity-1d-v1"}
    assert set(df["status"]) == {"FINISHED"}
    assert df["started"].is_monotonic_increasing and str(df["started"].dt.tz) == "UTC"
    assert [t.value // 1_000_000 for t in df["started"]] == [AUDITS[i][2] for i in want]
    assert list(df["policy/induced_shift"]) == [AUDITS[i][4] for i in want]
    assert list(df["policy/polarization"]) == [AUDITS[i][5] for i in want]
    assert list(df["policy/engagement"]) == [AUDITS[i][6] for i in want]
    assert list(df["effect/induced_shift/natural/ci_high"]) == pytest.approx(
        [AUDITS[i][4] + 0.02 for i in want]
    )
    assert "induced_shift" not in df.columns  # a child's metric


def test_history_filters_and_limits(store: dict[str, Any]) -> None:
    assert len(audit_history()) == 4
    assert list(audit_history(policy="random")["run_id"]) == [store["ids"][1]]
    assert len(audit_history(scenario="polarity-1d-v1")) == 4
    assert audit_history(scenario="other-v1").empty
    latest = audit_history(policy="ppo", max_results=2)
    assert list(latest["run_id"]) == [store["ids"][2], store["ids"][3]]
    with pytest.raises(ValueError):
        audit_history(policy="x' or '1'='1")


def test_regressions_name_the_version_that_made_things_worse(store: dict[str, Any]) -> None:
    df = audit_history(policy="ppo")
    reg = regressions(df, "policy/induced_shift", tolerance=0.01)
    assert list(zip(reg["from_version"], reg["to_version"], strict=True)) == [
        ("0.1.0+gaaa", "0.1.1+gbbb")
    ]
    assert reg["change"].iloc[0] == pytest.approx(0.26)
    # lower engagement is worse (0.52 -> 0.47), and so is pass -> flag on its own
    reg2 = regressions(df, "policy/engagement", higher_is_worse=False)
    assert list(reg2["to_version"]) == ["0.1.1+gbbb", "0.1.2+gccc"]
    assert reg2["change"].iloc[1] == pytest.approx(-0.05)
    verdict_only = regressions(df, "policy/not-logged")
    assert list(verdict_only["to_verdict"]) == ["flag"]
    assert verdict_only["change"].isna().all()
    assert regressions(df.iloc[0:0]).empty


def test_history_html_is_self_contained_with_a_chart(store: dict[str, Any]) -> None:
    df = audit_history(policy="ppo")
    html = render_history_html(df, "ppo <history>")
    _self_contained(html)
    assert "<h1>ppo &lt;history&gt;</h1>" in html
    images = _images(html)
    assert len(images) == 1 and images[0].startswith(PNG)
    for version in ("0.1.0+gaaa", "0.1.1+gbbb", "0.1.2+gccc"):
        assert version in html
    assert html.count("<tr>") == 1 + 3
    assert "0.31 [0.29, 0.33]" in html  # effect with its interval
    assert render_history_html(df, "t") == render_history_html(df, "t")  # deterministic
    empty = render_history_html(store["empty"], "none")
    _self_contained(empty)
    assert "No audits recorded." in empty and not _images(empty)


@pytest.mark.parametrize("panels", [2, 5])
def test_curves_figure_title_clears_the_panel_titles(panels):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from dashboards.figures import curves_figure
    from tests.report_sample import sample_report

    report = sample_report()
    curves = {a: dict(list(v.items())[:panels]) for a, v in report.curves.items()}
    fig = curves_figure(report.model_copy(update={"curves": curves}))
    canvas = FigureCanvasAgg(fig)
    canvas.draw()  # places the titles
    renderer = canvas.get_renderer()
    top = fig._suptitle.get_window_extent(renderer)
    titles = [ax.title.get_window_extent(renderer) for ax in fig.axes if ax.get_title()]
    assert len(titles) == panels
    # every panel title lies clearly below the figure's (0.15 in of space at least)
    assert all(t.y1 + 0.15 * fig.dpi < top.y0 for t in titles)
