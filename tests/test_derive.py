"""``recaudit scenario derive``: a scenario from a team's log, with the data's own ids,
a calibrated choice model, a named polarity axis or none, and a movable, fingerprinted
scenario directory. Bad input is refused with the first offending rows."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from auditor.spec import AuditSpec, axis_free_criteria
from recaudit.audit_cli import build_spec
from recaudit.cli import build_parser, main
from recommenders.derive import (
    Columns,
    DeriveOptions,
    DynamicsChoice,
    ItemColumns,
    derive,
    make_derived_log,
    read_items,
    read_log,
    solve_no_click,
    synthetic_log,
)
from simulator.catalog import build_catalog
from simulator.derived import load_scenario_dir
from simulator.engine import build_environment
from simulator.errors import SpecError
from simulator.scenarios import get_scenario
from simulator.specs import NaturalDrift, ScenarioSpec, TRecsDrift
from simulator.users import sample_population_with_ids

#: BPR on a tiny log learns within a few batches only with a larger step
FAST = {"epochs": 2, "learning_rate": 0.05, "steps": 10, "slate_size": 5}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("derive")
    log, table = synthetic_log(200, 100, 4000, seed=0)
    log.to_csv(d / "log.csv", index=False)
    table.to_csv(d / "items.csv", index=False)
    return d


@pytest.fixture(scope="module")
def derived(data):
    prov = derive(
        data / "log.csv",
        data / "out",
        items_path=data / "items.csv",
        item_columns=ItemColumns(category="genre", polarity="leaning"),
        options=DeriveOptions(scenario_id="shop-v1", **FAST),
    )
    return data / "out", prov


# ----------------------------------------------------------------- the scenario written
@pytest.mark.slow
def test_derived_scenario_keeps_the_datas_ids(derived, data):
    out, prov = derived
    spec = load_scenario_dir(out)
    cat = build_catalog(spec.catalog, spec.env_seed)
    log = pd.read_csv(data / "log.csv", dtype=str)
    assert set(cat.item_ids) == set(log["item_id"]) and len(cat.item_ids) == 100
    assert cat.item_ids[:3] == ("i0", "i1", "i10")  # non-numeric ids sort as strings
    _, users = sample_population_with_ids(
        spec.population, spec.default_users, cat.dim, env_seed=0, gen=torch.Generator()
    )
    assert set(users) == set(log["user_id"]) and spec.default_users == len(users)
    assert torch.allclose(cat.features.norm(dim=1), torch.ones(cat.size), atol=1e-5)
    # topics are the item table's categories (4 groups)
    table = pd.read_parquet(out / "items.parquet")
    assert sorted(set(table["category"])) == ["g0", "g1", "g2", "g3"]
    assert prov["rows"] == {"read": 4000, "kept": 4000, "dropped": {}}
    assert prov["inputs"]["log"]["columns"]["user"] == "user_id"


@pytest.mark.slow
def test_scenario_directory_moves_and_keeps_its_fingerprint(derived, tmp_path):
    out, prov = derived
    raw = json.loads((out / "scenario.json").read_text())
    assert raw["catalog"]["path"] == "items.parquet"
    assert raw["population"]["path"] == "users.parquet"
    moved = tmp_path / "elsewhere"
    shutil.copytree(out, moved)
    a, b = load_scenario_dir(out), load_scenario_dir(moved)
    assert a.catalog != b.catalog  # absolute paths differ
    assert a.fingerprint() == b.fingerprint() == prov["fingerprint"]
    # a changed data file is refused, not silently used
    table = pd.read_parquet(moved / "items.parquet")
    table["f0"] = table["f0"] * 0.5
    table.to_parquet(moved / "items.parquet", index=False)
    with pytest.raises(SpecError, match="has changed"):
        build_environment(load_scenario_dir(moved))


@pytest.mark.slow
def test_same_log_and_seed_give_the_same_fingerprint(derived, data):
    _, prov = derived
    again = derive(
        data / "log.csv",
        data / "again",
        items_path=data / "items.csv",
        item_columns=ItemColumns(category="genre", polarity="leaning"),
        options=DeriveOptions(scenario_id="shop-v1", **FAST),
    )
    assert again["fingerprint"] == prov["fingerprint"]
    other = derive(
        data / "log.csv",
        data / "other",
        items_path=data / "items.csv",
        item_columns=ItemColumns(category="genre", polarity="leaning"),
        options=DeriveOptions(scenario_id="shop-v1", **{**FAST, "seed": 1}),
    )
    assert other["fingerprint"] != prov["fingerprint"]


@pytest.mark.slow
def test_choice_is_calibrated_to_the_logs_rate(derived):
    out, prov = derived
    cal = prov["calibration"]
    spec = load_scenario_dir(out)
    assert spec.choice.temperature == pytest.approx(cal["temperature"])
    # the log's rate by its stated definition, recomputed from the log itself
    assert 0 < cal["log_rate"] < 1
    # the ML temperature explains choices better than uniform
    assert cal["log_likelihood_per_choice"] > cal["uniform_log_likelihood_per_choice"]
    # the simulated rate under the logging-policy proxy is close to the log's
    assert abs(cal["relative_error"]) < 0.15, cal
    assert cal["error"] == pytest.approx(cal["simulated_rate"] - cal["log_rate"])


def test_no_click_utility_hits_the_target_rate():
    gen = torch.Generator().manual_seed(0)
    users = torch.nn.functional.normalize(torch.randn(50, 4, generator=gen), dim=1)
    items = torch.nn.functional.normalize(torch.randn(20, 4, generator=gen), dim=1)
    slate = torch.arange(5)
    c0 = solve_no_click(users, items, slate, 0.3, 0.2)
    s = users @ items[slate].T / 0.3
    p = torch.sigmoid(torch.logsumexp(s, dim=1) - c0 / 0.3).mean()
    assert float(p) == pytest.approx(0.2, abs=1e-6)


def test_the_logs_rate_is_active_user_steps():
    log = pd.DataFrame(
        {
            "user": ["a", "a", "a", "b"],
            "item": ["x", "y", "x", "y"],
            "timestamp": [0.0, 1.0, 10.0, 10.0],
        }
    )
    d = make_derived_log(log, ("a", "b"), ("x", "y"), steps=2)
    # a is active in both steps (two interactions in step 0 count once), b in step 1
    assert d.rate == pytest.approx(3 / 4)
    assert d.step.tolist() == [0, 0, 1, 1] and d.step_seconds == 5.0


# ------------------------------------------------------------------------ polarity
@pytest.mark.slow
def test_a_named_attribute_gives_the_polarity_axis(derived):
    out, prov = derived
    spec = load_scenario_dir(out)
    assert spec.axis_free is False and spec.polarity_axis is not None
    assert np.linalg.norm(spec.polarity_axis) == pytest.approx(1.0)
    pol = prov["polarity"]
    assert pol["source"] == "item attribute 'leaning'" and pol["items_with_value"] == 100
    # the groups are learned: the axis explains far more of the attribute than 16
    # unrelated directions fitted to 100 items would (R^2 about 16/99)
    assert pol["r2"] > 0.35
    items = pd.read_parquet(out / "items.parquet")
    x = items[[f"f{d}" for d in range(16)]].to_numpy() @ np.array(spec.polarity_axis)
    assert np.corrcoef(x, items["polarity"])[0, 1] == pytest.approx(pol["r2"] ** 0.5, abs=1e-4)


@pytest.mark.slow
def test_no_axis_means_axis_free_criteria_and_the_fit_seam(data, tmp_path):
    seen = {}

    def fitter(log, items, users, choice):
        seen["n"] = len(log.user)
        seen["steps"] = int(log.step.max()) + 1
        return DynamicsChoice(
            dynamics=TRecsDrift(delta=0.2),
            drift=NaturalDrift(),
            fit={"family": "trecs", "estimates": {"delta": 0.2}},
            summary={"by": "test fitter", "kind": "trecs"},
        )

    prov = derive(
        data / "log.csv",
        tmp_path / "free",
        options=DeriveOptions(scenario_id="free-v1", **FAST),
        dynamics_fitter=fitter,
    )
    assert seen == {"n": 4000, "steps": 10}
    spec = load_scenario_dir(tmp_path / "free")
    assert spec.axis_free and spec.polarity_axis is None
    assert spec.fit == {"family": "trecs", "estimates": {"delta": 0.2}}
    assert spec.dynamics == TRecsDrift(delta=0.2)
    assert prov["polarity"]["axis"] is None
    audit = AuditSpec(scenario=spec, policy={"kind": "myopic"})
    assert [c.metric for c in audit.criteria] == ["induced_shift", "dispersion"]
    # the CLI names the directory and gets the same criteria
    args = build_parser().parse_args(
        ["audit", "--scenario", str(tmp_path / "free"), "--policy", "myopic"]
    )
    from_cli = build_spec(args)
    assert from_cli.scenario_spec().fingerprint() == prov["fingerprint"]
    assert [c.name for c in from_cli.criteria] == [
        "induced-shift-vs-myopic",
        "dispersion-vs-natural",
    ]
    # a scenario with an axis keeps the axis criteria
    axis = AuditSpec(scenario="polarity-1d-v1", policy={"kind": "myopic"})
    assert "polarization" in [c.metric for c in axis.criteria]


@pytest.mark.slow
def test_an_axis_free_scenarios_report_leads_with_the_axis_free_metrics(data, tmp_path):
    """Without a polarity axis the report (JSON order, HTML table, CLI table) leads with
    shift, induced shift and dispersion and leaves the axis metrics out; named ones are
    kept, last. A scenario with an axis keeps the registry's order."""
    from auditor.audit import run_audit
    from dashboards.report import render_html
    from recaudit.audit_cli import render_table
    from simulator.metric_registry import AXIS_METRICS, REGISTRY

    derive(
        data / "log.csv", tmp_path / "free", options=DeriveOptions(scenario_id="free-v1", **FAST)
    )
    spec = load_scenario_dir(tmp_path / "free")
    audit = AuditSpec(
        scenario=spec,
        policy={"kind": "popularity"},
        references=[{"kind": "natural"}],
        criteria=[c for c in axis_free_criteria() if c.reference == "natural"],
        users=20,
        steps=3,
        replicates=2,
        bootstrap=200,
    )
    order = audit.reported_metrics()
    assert order[:4] == ["shift", "induced_shift", "dispersion", "engagement"]
    assert not set(order) & set(AXIS_METRICS)
    assert set(order) == set(REGISTRY) - set(AXIS_METRICS)
    named = audit.model_copy(update={"metrics": ["polarization", "engagement", "shift"]})
    assert named.reported_metrics() == ["shift", "dispersion", "engagement", "polarization"]
    with_axis = AuditSpec(scenario="polarity-1d-v1", policy={"kind": "myopic"})
    assert with_axis.reported_metrics() == list(REGISTRY)

    report = run_audit(audit, track=False).report
    assert list(report.metrics["policy"]) == order
    assert list(json.loads(report.to_json())["metrics"]["policy"]) == order
    html = render_html(report, {})
    at = [html.index(f"<strong>{m}</strong>") for m in order]
    assert at == sorted(at) and "<strong>polarization</strong>" not in html
    header = render_table(report).splitlines()[2].split()
    assert header == ["arm", "shift", "induced_shift", "dispersion", "engagement", "welfare"]


def test_fit_section_is_bounded_and_counts_in_the_fingerprint():
    base = get_scenario("topics-tiny-v1")
    data = base.model_dump()
    with_fit = ScenarioSpec.model_validate({**data, "fit": {"family": "trecs"}})
    assert with_fit.fingerprint() != base.fingerprint()
    with pytest.raises(ValueError, match="KiB"):
        ScenarioSpec.model_validate({**data, "fit": {"x": "a" * 70_000}})
    with pytest.raises(ValueError, match="finite JSON"):
        ScenarioSpec.model_validate({**data, "fit": {"x": float("nan")}})


# ------------------------------------------------------------------------ bad input
def run_cli(capsys, *argv):
    code = main(["scenario", "derive", *map(str, argv)])
    err = capsys.readouterr().err.strip()
    return code, err


def test_missing_column_is_named(tmp_path, capsys):
    pd.DataFrame({"user_id": ["a"], "item_id": ["x"]}).to_csv(tmp_path / "l.csv", index=False)
    code, err = run_cli(capsys, tmp_path / "l.csv", "--out", tmp_path / "o")
    assert code == 2 and len(err.splitlines()) == 1
    assert "no timestamp column" in err and "columns: user_id, item_id" in err
    code, err = run_cli(capsys, tmp_path / "l.csv", "--out", tmp_path / "o", "--user-col", "who")
    assert code == 2 and "no column 'who' for the user" in err
    assert not (tmp_path / "o").exists()


def test_unparsable_timestamps_name_the_rows(tmp_path, capsys):
    log = pd.DataFrame(
        {
            "user_id": ["a", "b", "c", "d"],
            "item_id": ["x", "y", "x", "y"],
            "timestamp": ["2024-01-01", "2024-01-02T10:00", "yesterday", "2024-13-45"],
        }
    )
    log.to_csv(tmp_path / "l.csv", index=False)
    code, err = run_cli(capsys, tmp_path / "l.csv", "--out", tmp_path / "o")
    assert code == 2 and len(err.splitlines()) == 1
    assert "unparsable timestamp (timestamp) in rows 3, 4 ('yesterday', '2024-13-45')" in err


def test_date_times_are_read_as_seconds(tmp_path):
    log = pd.DataFrame(
        {"user": ["a", "b"], "item": ["x", "y"], "time": ["1970-01-01T00:01:00Z", "1970-01-02"]}
    )
    log.to_csv(tmp_path / "l.csv", index=False)
    read = read_log(tmp_path / "l.csv")
    assert read.log["timestamp"].tolist() == [60.0, 86400.0]
    assert read.columns["user"] == "user" and read.columns["timestamp"] == "time"


def test_nan_names_the_rows(tmp_path, capsys):
    log = pd.DataFrame(
        {
            "user_id": [1.0, np.nan, 3.0],
            "item_id": [1, 2, 3],
            "timestamp": [1.0, 2.0, 3.0],
        }
    )
    log.to_parquet(tmp_path / "l.parquet", index=False)
    code, err = run_cli(capsys, tmp_path / "l.parquet", "--out", tmp_path / "o")
    assert code == 2 and err.endswith("l.parquet: missing user (user_id) in row 2")
    log["user_id"] = [1.0, 2.0, 3.0]
    log["timestamp"] = [1.0, float("nan"), float("inf")]
    log.to_parquet(tmp_path / "l.parquet", index=False)
    code, err = run_cli(capsys, tmp_path / "l.parquet", "--out", tmp_path / "o")
    assert code == 2 and "missing timestamp (timestamp) in row 2" in err
    # float ids that are whole numbers are the integers' ids
    log["timestamp"] = [1.0, 2.0, 3.0]
    log.to_parquet(tmp_path / "l.parquet", index=False)
    assert read_log(tmp_path / "l.parquet").log["user"].tolist() == ["1", "2", "3"]


def test_duplicate_item_ids_name_the_rows(tmp_path, capsys):
    log, _ = synthetic_log(10, 4, 20)
    log.to_csv(tmp_path / "l.csv", index=False)
    pd.DataFrame({"item_id": ["i0", "i1", "i2", "i1", "i3"], "genre": list("abcde")}).to_csv(
        tmp_path / "items.csv", index=False
    )
    code, err = run_cli(
        capsys, tmp_path / "l.csv", "--out", tmp_path / "o", "--items", tmp_path / "items.csv"
    )
    assert code == 2 and len(err.splitlines()) == 1
    assert "item id 'i1' appears more than once (rows 2, 4)" in err
    with pytest.raises(SpecError, match="item id"):
        read_items(tmp_path / "items.csv")


def test_ratings_and_labels_drop_rows_and_count_them(tmp_path):
    log = pd.DataFrame(
        {
            "user_id": ["a", "b", "c", "d"],
            "item_id": ["x", "y", "x", "y"],
            "timestamp": [1, 2, 3, 4],
            "rating": [5, 2, 4, 1],
            "label": [1, 1, 0, 1],
        }
    )
    log.to_csv(tmp_path / "l.csv", index=False)
    read = read_log(tmp_path / "l.csv", Columns(), min_rating=4)
    assert read.log["user"].tolist() == ["a"]
    assert read.dropped == {"label is 0 (not a positive interaction)": 1, "rating below 4": 2}


def test_other_bad_input_is_one_line(tmp_path, capsys):
    (tmp_path / "l.json").write_text("{}")
    code, err = run_cli(capsys, tmp_path / "l.json", "--out", tmp_path / "o")
    assert code == 2 and "must be .csv, .parquet, .inter" in err
    log, _ = synthetic_log(10, 4, 20)
    log.to_csv(tmp_path / "l.csv", index=False)
    code, err = run_cli(capsys, tmp_path / "l.csv", "--out", tmp_path / "o", "--id", "Bad")
    assert code == 2 and "must look like name-v1" in err
    code, err = run_cli(
        capsys, tmp_path / "l.csv", "--out", tmp_path / "o", "--dynamics", "trecs",
        "--dynamics-param", "delta=7",
    )  # fmt: skip
    assert code == 2 and "delta" in err
    code, err = run_cli(capsys, tmp_path / "l.csv", "--out", tmp_path / "o", "--model", "MF")
    assert code == 2 and "supported: BPR" in err


@pytest.mark.slow
def test_simulate_names_a_derived_scenario_by_path(derived, tmp_path, capsys):
    out, prov = derived
    argv = ["simulate", "--scenario", str(out), "--policy", "myopic", "--users", "20"]
    code = main([*argv, "--steps", "2", "--seeds", "1", "--json", "--no-progress"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and result["scenario"] == "shop-v1"
    assert result["fingerprint"] == prov["fingerprint"]
    code = main(["simulate", "--scenario", str(tmp_path / "nope"), "--policy", "myopic"])
    assert code == 2 and "not a scenario directory" in capsys.readouterr().err
