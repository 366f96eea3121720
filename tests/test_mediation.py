"""Mediated engagement: the policy's slates scored under the natural counterfactual's
preferences (same slates, same random numbers)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from auditor.audit import BuiltinPolicy, run_audit
from auditor.measure import ArmJob, run_arm
from auditor.spec import AuditSpec
from simulator.engine import build_environment, run_arms
from simulator.scenarios import get_scenario
from simulator.specs import with_overrides


def _job(scenario, kind, natural="random", users=60, steps=8, seed=3):
    return ArmJob(
        scenario,
        "policy",
        BuiltinPolicy(kind),
        users,
        steps,
        seed,
        0,
        (0, steps),
        counterfactual=BuiltinPolicy(natural),
    )


def test_mediation_scores_the_arms_slates_under_the_counterfactuals_preferences_by_hand():
    scenario = get_scenario("topics-tiny-v1")
    out = run_arm(_job(scenario, "myopic"))
    # the same replicate in the lockstep engine, trajectories kept
    env = build_environment(scenario)
    res = run_arms(
        env,
        {"l": BuiltinPolicy("myopic")(), "n": BuiltinPolicy("random")()},
        users=60,
        steps=8,
        seed=3,
        record_full=True,
    )
    cat = env.catalog
    actual = torch.zeros(60, dtype=torch.float64)
    natural = torch.zeros(60, dtype=torch.float64)
    for t, slate in enumerate(res.arms["l"].slates):
        for u, acc in (
            (res.arms["l"].preferences[t], actual),
            (res.arms["n"].preferences[t], natural),
        ):
            p = env.choice.probabilities(u, cat.features[slate], cat.appeal[slate])
            acc += 1.0 - p[:, -1].double()
    assert out.mediation is not None
    np.testing.assert_allclose(out.mediation[0], actual.numpy(), rtol=1e-9)
    np.testing.assert_allclose(out.mediation[1], natural.numpy(), rtol=1e-9)
    assert out.mediation.shape == (3, 60)
    assert out.final["mediated_share"] == pytest.approx(
        float(1 - natural.sum() / actual.sum()), rel=1e-12
    )
    # expected clicks under the actual preferences are the engine's expected engagement
    assert float(actual.mean()) / 8 == pytest.approx(out.final["expected_engagement"], rel=1e-6)
    np.testing.assert_allclose(
        out.per_user["mediated_engagement"], ((actual - natural) / 8).numpy()
    )


def test_nothing_is_mediated_without_preference_dynamics_or_for_the_natural_arm():
    scenario = with_overrides(get_scenario("topics-tiny-v1"), {"dynamics": {"kind": "none"}})
    spec = AuditSpec.model_validate(
        {
            "scenario": scenario.model_dump(),
            "users": 30,
            "steps": 5,
            "replicates": 2,
            "policy": {"kind": "oracle-greedy"},
            "references": [{"kind": "natural"}, {"kind": "myopic"}, {"kind": "popularity"}],
            "criteria": [],
        }
    )
    report = run_audit(spec, track=False).report
    for arm, figures in report.metrics.items():
        assert figures["mediated_share"].per_replicate == [0.0, 0.0], arm
        assert figures["mediated_engagement"].per_replicate == [0.0, 0.0], arm


def test_evans_a_policy_that_shifts_nobody_has_nothing_mediated():
    """Evans-Kasirzadeh with a counterfactual that leaves preferences where they are (as
    in the derivation): the myopic oracle shows each user their own wing, changes nobody,
    and none of its engagement is mediated; strong-right users earn 12 clicks in 30 steps."""
    scenario = with_overrides(
        get_scenario("evans-polarization-v1"), {"natural_policy": "oracle-greedy"}
    )
    out = run_arm(_job(scenario, "oracle-greedy", natural="oracle-greedy", users=400, steps=30))
    assert out.final["mediated_share"] == 0.0
    strong_right = out.types == 1
    assert out.mediation[0][strong_right].mean() == pytest.approx(12.0, abs=1e-4)
