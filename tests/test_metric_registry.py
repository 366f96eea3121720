"""The metric registry: every metric against a hand-computed value, and the docs' table."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from simulator.metric_registry import (
    DESCRIPTIONS,
    REGISTRY,
    STEP_SERIES,
    STREAMED,
    USER_METRICS,
    RunMeasures,
    StepMeasures,
    markdown_table,
)

S2 = math.sqrt(2.0)


def hand_run() -> RunMeasures:
    """Two users, two steps, four items, two topics: small enough to compute by hand."""
    return RunMeasures(
        steps=2,
        series={
            "engagement": [0.5, 1.0],
            "expected_engagement": [0.4, 0.6],
            "initial_pref_engagement": [0.3, 0.5],
            "welfare": [1.0, 2.0],
            "shift": [0.1, 0.7],
            "polarization": [0.1, 0.25],
            "esteban_ray": [0.0, 0.3],
            "bimodality": [0.2, 0.6],
            "mean_pairwise_distance": [0.1, 0.7],
            "extreme_share": [0.0, 0.5],
            "dispersion": [0.1, 0.2],
            "polarity_mean": [0.0, 0.0],
        },
        u0=torch.tensor([[1.0, 0.0], [0.0, 1.0]]),
        u=torch.tensor([[0.0, 1.0], [0.0, 1.0]]),
        u_natural=torch.tensor([[1.0, 0.0], [0.0, -1.0]]),
        axis=torch.tensor([1.0, 0.0]),
        clicks=torch.tensor([2.0, 1.0]),
        exposure=torch.tensor([3.0, 1.0, 0.0, 0.0], dtype=torch.float64),
        consumed=torch.tensor([[True, True, False, False], [False, True, False, False]]),
        pairs=torch.tensor([[0, 1]]),
        topic_counts=torch.tensor([[1.0, 1.0], [1.0, 0.0]], dtype=torch.float64),
        expected_actual=torch.tensor([1.0, 1.0], dtype=torch.float64),
        expected_natural=torch.tensor([0.5, 1.0], dtype=torch.float64),
    )


#: the final value of every metric on hand_run(), worked out by hand
EXPECTED = {
    "engagement": 0.75,  # mean of the per-step click shares
    "expected_engagement": 0.5,
    "cumulative_clicks": 1.5,  # (2 + 1) / 2
    "initial_pref_engagement": 0.4,
    "welfare": 1.5,
    "shift": S2 / 2,  # user 1 moved from e1 to e2 (sqrt 2), user 2 stayed
    "shift_angle": math.pi / 4,  # pi/2 and 0
    "induced_shift": (S2 + 2.0) / 2,  # |e2 - e1| = sqrt 2, |e2 - (-e2)| = 2
    "polarization": 0.25,  # the last step's
    "polarization_change": 0.0,  # 0.25 - variance of (1, 0) = 0.25
    "esteban_ray": 0.3,
    "bimodality": 0.6,
    "mean_pairwise_distance": 0.7,
    "extreme_share": 0.5,
    "dispersion": 0.2,
    "jaccard": 0.5,  # {0, 1} and {1}: 1 shared of 2
    "topic_entropy": 0.5,  # 1 bit (one click per topic) and 0 bits
    "coverage": 0.5,  # items 0 and 1 of 4 shown
    "exposure_gini": 0.625,  # sorted (0, 0, 1, 3): 2 (3 + 12) / (4 * 4) - 5 / 4
    "mediated_engagement": 0.125,  # ((1 - 0.5) / 2 + 0) / 2
    "mediated_share": 0.25,  # 1 - 1.5 / 2
    "mediated_share_initial": 0.2,  # 1 - (0.3 + 0.5) / (0.4 + 0.6)
}


def test_every_metric_has_a_hand_computed_expectation():
    assert set(EXPECTED) == set(REGISTRY)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_metric_final_value_by_hand(name):
    r = hand_run()
    m = REGISTRY[name]
    assert m.final(r) == pytest.approx(EXPECTED[name], abs=1e-12)
    if m.user is not None:  # the per-user values average to the final figure
        assert float(m.user(r).mean()) == pytest.approx(EXPECTED[name], abs=1e-12)


STEP = StepMeasures(
    u=torch.tensor([[-1.0, 0.0], [-1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [1.0, 0.0]]),
    z=torch.tensor([-1.0, -1.0, 1.0, 1.0, -1.0, 1.0]),
    lo=-1.0,
    hi=1.0,
    extreme_threshold=0.8,
)
STEP_EXPECTED = {
    # two equal camps in bins centred at -0.95 and 0.95: 2 * 0.5^2.6 * 0.5 * 1.9
    "esteban_ray": 1.9 * 0.5**2.6,
    # n = 6, g = 0, excess kurtosis ((n+1)(-2) + 6)(n-1) / ((n-2)(n-3)) = -10/3
    "bimodality": 12 / 35,
    "mean_pairwise_distance": 2.0 * 18 / 30,  # 18 of the 30 ordered pairs are 2 apart
    "extreme_share": 1.0,
    "dispersion": 1.0,  # variance 1 along the first direction, 0 along the second
}


def test_every_per_step_function_by_hand():
    stepped = {name for name, m in REGISTRY.items() if m.step is not None}
    assert stepped == set(STEP_EXPECTED)
    for name, want in STEP_EXPECTED.items():
        assert REGISTRY[name].step(STEP) == pytest.approx(want, abs=1e-12), name


def test_the_registry_describes_every_metric():
    for m in REGISTRY.values():
        assert m.description and m.unit
        assert m.direction in ("higher is worse", "higher is better", "neutral")
        assert m.timing in ("per_step", "final")
        # a per-step metric has a series: the engine streams it or a step function makes it
        assert (m.timing == "per_step") == (m.streamed or m.step is not None)
        assert not (m.streamed and m.step is not None)
    assert set(USER_METRICS) <= set(REGISTRY)
    from auditor.spec import METRICS

    assert METRICS == DESCRIPTIONS


def test_the_engine_streams_the_registrys_series_under_their_names():
    from recommenders.registry import make_policy
    from simulator.engine import SUMMARY_COLUMNS, build_environment, run_arms
    from simulator.scenarios import get_scenario

    assert set(STREAMED) <= set(SUMMARY_COLUMNS) and set(STREAMED) <= set(STEP_SERIES)
    env = build_environment(get_scenario("topics-tiny-v1"))
    res = run_arms(env, {"p": make_policy("myopic")}, users=30, steps=4, seed=3)
    rec = res.arms["p"]
    assert list(rec.summaries) == list(SUMMARY_COLUMNS)
    # the streamed engagement series is the share of users who clicked at each step
    assert REGISTRY["engagement"].final(
        RunMeasures(**{**hand_run().__dict__, "steps": 4, "series": rec.summaries})
    ) == pytest.approx(float(rec.clicks.sum()) / (30 * 4), abs=1e-6)


def test_the_docs_metric_table_is_the_registrys():
    docs = Path(__file__).resolve().parents[1] / "docs" / "auditing.md"
    assert markdown_table() in docs.read_text()


def _same(a: float, b: float) -> bool:
    """Equal to the last bit, or both undefined (NaN)."""
    return a == b or (math.isnan(a) and math.isnan(b))


def _simulate(scenario, policy: str, users: int, steps: int, seeds: list[int]):
    """`recaudit simulate`'s outcomes and figures, in process."""
    from auditor.plan import BuiltinPolicy
    from auditor.simulate import aggregate, run_simulation_jobs, simulation_jobs

    jobs = simulation_jobs(scenario, BuiltinPolicy(policy), users=users, steps=steps, seeds=seeds)
    outcomes = run_simulation_jobs(jobs)
    return outcomes, aggregate(outcomes)


def test_simulate_and_audit_give_the_same_figures_on_the_same_run():
    from auditor.audit import run_audit
    from auditor.spec import AuditSpec
    from simulator.scenarios import get_scenario

    scenario = get_scenario("topics-tiny-v1")
    report = run_audit(
        AuditSpec.model_validate(
            {
                "scenario": "topics-tiny-v1",
                "policy": {"kind": "myopic"},
                "references": [{"kind": "natural"}],
                "users": 40,
                "steps": 6,
                "replicates": 2,
                "seed": 11,
                "criteria": [],
            }
        ),
        track=False,
    ).report
    _, figures = _simulate(scenario, "myopic", 40, 6, [11, 12])
    for arm in ("policy", "natural"):
        assert list(figures[arm]) == list(REGISTRY)  # simulate reports every metric
        reported = [m for m in REGISTRY if m in report.metrics[arm]]
        assert {"induced_shift", "mediated_share", "jaccard", "esteban_ray"} <= set(reported)
        for m in reported:  # every figure both report, to the last bit
            for r in range(2):
                sim, aud = figures[arm][m]["per_seed"][r], report.metrics[arm][m].per_replicate[r]
                assert _same(sim, aud), (arm, m, r, sim, aud)


def test_simulate_runs_and_measures_every_arm_with_run_arm(monkeypatch, capsys):
    """`recaudit simulate` has no run-and-measure path of its own: each seed is the
    audit's job of the policy beside the natural counterfactual, run and measured by
    ``measure_arms`` (``run_arm``'s function), and every reported figure is an
    ``ArmOutcome``'s."""
    import json

    import auditor.simulate
    from auditor import measure
    from recaudit.cli import main

    for gone in ("run_simulation", "SimJob", "SimOutcome", "final_figures"):
        assert not hasattr(auditor.simulate, gone)
    assert auditor.simulate.measure_arms is measure.measure_arms
    seen: list[tuple[measure.ArmJob, list[measure.ArmOutcome]]] = []
    real = measure.measure_arms

    def spy(job, progress=None):
        outs = real(job, progress)
        seen.append((job, outs))
        return outs

    monkeypatch.setattr(auditor.simulate, "measure_arms", spy)
    argv = ["simulate", "--scenario", "topics-tiny-v1", "--policy", "myopic"]
    argv += ["--users", "30", "--steps", "4", "--seeds", "2", "--seed", "5", "--json"]
    argv += ["--in-process"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert [j.seed for j, _ in seen] == [5, 6]
    for job, outs in seen:
        assert job.counterfactual is not None
        assert [o.label for o in outs] == ["policy", "natural"]
        for out in outs:
            for m, value in out.final.items():
                got = result["arms"][out.label][m]["per_seed"][job.replicate]
                assert (got is None and math.isnan(value)) or got == value, (out.label, m)


def test_the_natural_arm_measured_beside_the_policy_is_the_natural_arm_run_alone():
    """Simulate measures the natural counterfactual in the policy's run; an audit runs the
    natural arm alone (run_arm). Same users and random numbers: the same outcome."""
    import dataclasses

    from auditor.measure import measure_arms, run_arm
    from auditor.plan import BuiltinPolicy
    from auditor.simulate import simulation_jobs
    from simulator.scenarios import get_scenario

    scenario = get_scenario("topics-tiny-v1")
    [job] = simulation_jobs(scenario, BuiltinPolicy("myopic"), users=30, steps=5, seeds=[3])
    policy, natural = outs = measure_arms(job)
    alone = run_arm(
        dataclasses.replace(
            job,
            label="natural",
            factory=job.counterfactual,
            counterfactual=None,
            counterfactual_label=None,
        )
    )
    assert run_arm(job).final == policy.final  # run_arm is the first outcome
    assert policy.final["induced_shift"] > 0 and natural.final["induced_shift"] == 0.0
    for got, want in ((natural, alone), (policy, run_arm(job))):
        assert got.per_step == want.per_step
        assert {m: v for m, v in got.final.items() if not math.isnan(v)} == {
            m: v for m, v in want.final.items() if not math.isnan(v)
        }
        for m in want.per_user:
            np.testing.assert_array_equal(got.per_user[m], want.per_user[m])
        np.testing.assert_array_equal(got.snapshots, want.snapshots)
        np.testing.assert_array_equal(got.mediation, want.mediation)
    assert len(outs) == 2
