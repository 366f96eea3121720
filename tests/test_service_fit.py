"""POST /v1/datasets with ``fit``: the derived scenario's dynamics are fitted from the
uploaded log (recaudit fit's fitter), its fit section shows in every audit's report, the
fit is counted in the derivation's budget, and DELETE stops it."""

from __future__ import annotations

from contextlib import contextmanager

import psutil
import pytest
from fastapi.testclient import TestClient

from auditor.budget import FIT_PASSES
from recommenders.derive import synthetic_log
from service.app import create_app, real_execute
from service.datasets import DatasetStore
from service.store import open_engine
from service.uploads import PolicyStore

from .service_helpers import TINY_SPEC, auth, finish_audit, make_key, settings, wait_for
from .test_service_datasets import csv_bytes, leftovers, problem, service, upload

#: a fit small enough for tests: two families, each user's first 12 events, 10 replicates
FIT = {"candidates": ["trecs"], "max_events": 12, "replicates": 10}


@pytest.fixture(scope="module")
def log():
    return synthetic_log(60, 30, 900, seed=3)[0]


@contextmanager
def audited_service(tmp_path):
    """The real app: real derivations and the real auditor (in process), which resolves
    the tenant's derived scenarios."""
    s = settings(tmp_path)
    engine = open_engine(s.db_url)
    run = real_execute(s, PolicyStore(engine, s.policies_dir), DatasetStore.open(engine, s))
    with TestClient(create_app(s, execute=run)) as c:
        c.key = make_key(s, "acme")  # type: ignore[attr-defined]
        c.settings = s  # type: ignore[attr-defined]
        yield c
    engine.dispose()


def fit_children() -> list[psutil.Process]:
    """This process's children running a fit (recommenders.fit_step)."""
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if "recommenders.fit_step" in " ".join(p.cmdline()):
                out.append(p)
        except psutil.NoSuchProcess:  # ended while listed
            pass
    return out


def finish_dataset(c, did: str, timeout: float = 300.0) -> dict:
    def done():
        body = c.get(f"/v1/datasets/{did}", headers=auth(c.key)).json()
        return body if body["status"] in ("succeeded", "failed", "cancelled") else None

    return wait_for(done, timeout=timeout)


@pytest.mark.slow
def test_a_derivation_with_fit_carries_the_fit_into_the_scenario_and_the_report(tmp_path, log):
    from auditor.spec import AuditSpec
    from auditor.tracking import _spec_params

    with audited_service(tmp_path) as c:
        r = upload(c, csv_bytes(log), options={"fit": FIT})
        assert r.status_code == 202, r.text
        ds = r.json()
        # each user's first 12 events x slate 3 x dimension 8 x 2 families (static, trecs)
        # x the passes of a family's search
        events = int(log.groupby("user_id").size().clip(upper=12).sum())
        assert ds["fit_cost"] == events * 3 * 8 * 2 * FIT_PASSES
        assert ds["cost"] == 900 * 8 * 1 + ds["fit_cost"]
        body = finish_dataset(c, ds["id"])
        assert body["status"] == "succeeded", body
        fit_summary = body["derivation"]["dynamics"]
        assert fit_summary["by"] == "fitted" and fit_summary["fitted"] is True

        spec = c.get("/v1/scenarios/shop-v1", headers=auth(c.key)).json()["spec"]
        fit = spec["fit"]
        assert fit["family"] in ("static", "trecs") and fit["family"] == fit_summary["family"]
        assert [x["family"] for x in fit["candidates"]] == ["static", "trecs"]
        assert spec["dynamics"] == fit["dynamics"]  # the scenario runs the fitted dynamics
        assert fit["data"]["max_events_per_user"] == 12
        assert fit["data"]["bootstrap_replicates"] == 10
        assert fit["data"]["events"] == events

        # an audit of the scenario shows the fit in its HTML report and its MLflow params
        a = c.post(
            "/v1/audits",
            json={**TINY_SPEC, "scenario": "shop-v1", "users": 10},
            headers=auth(c.key),
        )
        assert a.status_code == 202, a.text
        done = finish_audit(c, a.json()["id"], timeout=300)
        assert done["status"] == "succeeded", done
        html = c.get(f"/v1/audits/{done['id']}/report.html", headers=auth(c.key)).text
        assert "<h2>Dynamics fit</h2>" in html
        assert f"Selected family: <b>{fit['family']}</b>" in html
        own = DatasetStore.open(open_engine(c.settings.db_url), c.settings).scenario(
            "acme", "shop-v1"
        )
        assert own is not None and own.fit == fit
        params = _spec_params(AuditSpec(scenario=own, policy={"kind": "myopic"}), "shop-v1", 5)
        assert params["fit.family"] == fit["family"]


def test_a_fit_over_the_budget_or_badly_asked_is_refused_and_leaves_nothing(tmp_path, log):
    derive_cost = 900 * 8 * 1
    with service(tmp_path, max_derive_cost=derive_cost + 1000) as c:
        # the derivation alone fits the budget
        ok = upload(c, csv_bytes(log), scenario_id="plain-v1")
        assert ok.status_code == 202, ok.text
        # with a fit it does not: events x slate x dimension x families is counted too
        over = upload(c, csv_bytes(log), options={"fit": FIT})
        detail = problem(over, 422, "budget")
        assert "dynamics fit costs" in detail and "RECAUDIT_MAX_DERIVE_COST" in detail
        assert " x 2 families x " in detail  # static and trecs
        # bounded confidence may be corrected by two more fits, tried twice (simulator.fitting.debias)
        gated = upload(
            c, csv_bytes(log), options={"fit": {**FIT, "candidates": ["bounded_confidence"]}}
        )
        assert " x 6 families x " in problem(gated, 422, "budget")
        bad = [
            ({"candidates": ["nope"]}, "unknown family 'nope'"),
            ({"max_events": 0}, "invalid fit.max_events"),
            ({"proxy": "logged"}, "invalid fit.proxy"),
            ({"replicates": 10**6}, "invalid fit.replicates"),
            ({"colour": 1}, "invalid fit.colour"),
        ]
        for fit, message in bad:
            assert message in problem(upload(c, csv_bytes(log), options={"fit": fit}), 422)
        both = upload(c, csv_bytes(log), options={"fit": FIT, "dynamics": {"kind": "none"}})
        assert "give dynamics or fit, not both" in problem(both, 422)
        kept = {p.split("/")[1] for p in leftovers(c) if p.count("/") >= 1}
        assert len(kept) == 1  # only the accepted upload's directory
    with service(tmp_path / "cells", max_cells=1000) as c:
        detail = problem(upload(c, csv_bytes(log), options={"fit": FIT}), 422, "budget")
        assert "RECAUDIT_MAX_CELLS" in detail and "max_events" in detail
        assert leftovers(c) == []


@pytest.mark.slow
def test_delete_stops_a_fit_in_progress(tmp_path, log):
    long_fit = {"max_events": 200, "replicates": 2000}  # every family: minutes of work
    with audited_service(tmp_path) as c:
        r = upload(c, csv_bytes(log), options={"fit": long_fit})
        assert r.status_code == 202, r.text
        did = r.json()["id"]

        def fitting():
            body = c.get(f"/v1/datasets/{did}", headers=auth(c.key)).json()
            return body if body["phase"].startswith("fitting dynamics: selection") else None

        seen = wait_for(fitting, timeout=300)
        assert seen["status"] == "running" and 0.5 <= seen["progress"] < 1
        assert len(fit_children()) == 1  # the fit runs in its own process
        # its files sit where a restart's staging clean-up finds them if the service dies
        root = c.settings.datasets_root
        assert len([p for p in root.iterdir() if p.name.startswith(".upload-")]) == 1
        d = c.delete(f"/v1/datasets/{did}", headers=auth(c.key))
        assert d.status_code == 202, d.text
        body = finish_dataset(c, did, timeout=60)
        assert body["status"] == "cancelled" and body["derivation"] is None
        assert fit_children() == []  # killed, not left running
        assert not [p for p in root.iterdir() if p.name.startswith(".upload-")]
        again = c.delete(f"/v1/datasets/{did}", headers=auth(c.key))
        assert "already cancelled" in problem(again, 409)
        # the scenario was not written and its id is free again
        assert "shop-v1" not in [
            s["id"] for s in c.get("/v1/scenarios", headers=auth(c.key)).json()
        ]
        problem(c.delete("/v1/datasets/d0000000000000000", headers=auth(c.key)), 404)


@pytest.mark.slow
def test_the_fit_in_a_child_process_equals_the_cli_derivation_fit(tmp_path, log, capsys):
    from recaudit.cli import main
    from recommenders.derive import DeriveOptions, derive
    from recommenders.fit_step import fitted_dynamics
    from simulator.derived import load_scenario_dir
    from simulator.fitting.run import FitOptions

    log.to_csv(tmp_path / "log.csv", index=False)
    flags = ["--epochs", "1", "--learning-rate", "0.05", "--steps", "5", "--slate-size", "3"]
    flags += ["--dim", "8", "--fit", "trecs", "--fit-max-events", "12", "--fit-replicates", "10"]
    out = tmp_path / "cli"
    assert main(["scenario", "derive", str(tmp_path / "log.csv"), "--out", str(out), *flags]) == 0
    assert "fitting dynamics: selection: fitting trecs" in capsys.readouterr().err
    options = DeriveOptions(
        scenario_id="derived-v1", epochs=1, learning_rate=0.05, steps=5, slate_size=3, dim=8
    )
    fit = FitOptions(candidates=("trecs",), slate_size=3, max_events=12, replicates=10)
    derive(
        tmp_path / "log.csv",
        tmp_path / "child",
        options=options,
        dynamics_fitter=fitted_dynamics(fit, isolated=True),
    )
    here, there = (load_scenario_dir(tmp_path / d) for d in ("cli", "child"))
    assert here.fit is not None and there.fit is not None
    assert {**here.fit, "seconds": 0} == {**there.fit, "seconds": 0}
    assert here.dynamics == there.dynamics and here.fingerprint() == there.fingerprint()
    # a fit chooses the dynamics; asking for both is bad input
    both = ["scenario", "derive", str(tmp_path / "log.csv"), "--out", str(tmp_path / "x")]
    assert main([*both, "--fit", "--dynamics", "none"]) == 2
    assert "give --dynamics or --fit, not both" in capsys.readouterr().err


def test_recaudit_fit_reads_logs_with_the_derivation_reader(tmp_path, capsys):
    from recaudit.cli import main

    p = tmp_path / "log.csv"
    p.write_text("user_id,item_id,time\na,1,10\nb,2,2024-01-01\nc,3,soon\n")
    assert main(["fit", str(p), "--catalog", "topics-tiny-v1"]) == 2
    err = capsys.readouterr().err
    assert "log.csv: unparsable timestamp (time) in row 3 ('soon')" in err
