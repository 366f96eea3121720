"""The rollout loop's contracts: common random numbers, pairing, determinism, oracles."""

from __future__ import annotations

import pytest
import torch

from recommenders.baselines import OracleGreedy, Popularity, UniformRandom
from simulator.engine import build_environment, run_arms
from simulator.errors import SpecError
from simulator.scenarios import SCENARIOS, get_scenario
from simulator.specs import NaturalDrift, NoDynamics, with_overrides
from tests.doubles import BadShapePolicy, ConstantPolicy, OutOfRangePolicy

TINY = get_scenario("topics-tiny-v1")


def policies():
    return {"random": UniformRandom(), "popularity": Popularity(), "oracle": OracleGreedy()}


def test_same_policy_in_two_arms_gives_identical_trajectories():
    env = build_environment(TINY)
    res = run_arms(
        env,
        {"a": UniformRandom(), "b": UniformRandom()},
        users=40,
        steps=6,
        seed=3,
        reference="b",
        record_full=True,
    )
    a, b = res.arms["a"], res.arms["b"]
    for pa, pb in zip(a.preferences, b.preferences, strict=True):
        assert torch.equal(pa, pb)
    for sa, sb in zip(a.slates, b.slates, strict=True):
        assert torch.equal(sa, sb)
    assert a.summaries == b.summaries
    assert a.summaries["induced_shift"] == [0.0] * 6


@pytest.mark.parametrize("scenario_id", sorted(SCENARIOS))
def test_no_dynamics_means_zero_induced_shift_for_every_policy(scenario_id):
    spec = get_scenario(scenario_id).model_copy(
        update={"dynamics": NoDynamics(), "drift": NaturalDrift()}
    )
    env = build_environment(spec)
    arms = policies()
    res = run_arms(env, arms, users=30, steps=4, seed=1, reference="random")
    for name, rec in res.arms.items():
        assert rec.summaries["induced_shift"] == [0.0] * 4, name
        assert rec.summaries["shift"] == [0.0] * 4, name
        assert torch.equal(rec.final, res.initial)


def test_natural_drift_is_common_to_arms_without_item_dynamics():
    """With only the recommendation-independent drift, every policy moves users the same way."""
    spec = TINY.model_copy(update={"dynamics": NoDynamics()})
    res = run_arms(
        build_environment(spec), policies(), users=30, steps=5, seed=2, reference="random"
    )
    assert res.arms["random"].summaries["shift"][-1] > 0.01  # users do drift
    for rec in res.arms.values():
        assert torch.equal(rec.final, res.arms["random"].final)


def test_same_seed_is_bitwise_reproducible_and_seeds_differ():
    env = build_environment(TINY)

    def finals(seed):
        res = run_arms(env, policies(), users=50, steps=5, seed=seed, reference="random")
        return {k: (v.final, v.summaries) for k, v in res.arms.items()}

    first, second, other = finals(7), finals(7), finals(8)
    for arm in first:
        assert torch.equal(first[arm][0], second[arm][0])
        assert first[arm][1] == second[arm][1]
        assert not torch.equal(first[arm][0], other[arm][0])


def test_arm_order_and_extra_arms_do_not_change_an_arm():
    """An arm's result depends on its policy and seed only, not on which arms run beside it."""
    env = build_environment(TINY)
    alone = run_arms(env, {"o": OracleGreedy()}, users=30, steps=5, seed=4)
    crowd = run_arms(
        env,
        {"r": UniformRandom(), "p": Popularity(), "o": OracleGreedy()},
        users=30,
        steps=5,
        seed=4,
    )
    assert torch.equal(alone.arms["o"].final, crowd.arms["o"].final)


def test_true_preferences_reach_only_oracles():
    env = build_environment(TINY)
    const = ConstantPolicy([0, 1, 2])
    oracle = OracleGreedy()
    seen = []
    orig_act = oracle.act

    def spy(obs):
        seen.append(obs.true_preferences)
        return orig_act(obs)

    oracle.act = spy
    run_arms(env, {"c": const, "o": oracle}, users=10, steps=3, seed=0)
    assert all(o.true_preferences is None for o in const.observations)
    assert all(p is not None and p.shape == (10, 4) for p in seen)
    # the feedback holds slates and choices, never preferences
    fb = const.feedback[0]
    assert set(vars(fb)) == {"t", "slate", "slot", "item"}


def test_feedback_items_match_slots():
    env = build_environment(TINY)
    const = ConstantPolicy([5, 6, 7])
    run_arms(env, {"c": const}, users=200, steps=3, seed=0)
    for fb in const.feedback:
        clicked = fb.slot >= 0
        assert torch.equal(fb.item[clicked], torch.tensor([5, 6, 7])[fb.slot[clicked]])
        assert (fb.item[~clicked] == -1).all()
        assert 0 < clicked.sum() < 200  # the MNL has an outside option


@pytest.mark.parametrize("bad", [BadShapePolicy([0, 1, 2]), OutOfRangePolicy([0, 1, 2])])
def test_malformed_slates_are_refused_with_a_clear_error(bad):
    with pytest.raises(SpecError, match="policy 'constant'"):
        run_arms(build_environment(TINY), {"x": bad}, users=5, steps=1, seed=0)


def test_one_policy_instance_cannot_serve_two_arms():
    p = UniformRandom()
    with pytest.raises(SpecError, match="own policy instance"):
        run_arms(build_environment(TINY), {"a": p, "b": p}, users=5, steps=1, seed=0)


def test_click_rate_of_a_constant_slate_matches_the_logit():
    """Static users, one item: the empirical click rate converges to the MNL probability."""
    spec = TINY.model_copy(update={"dynamics": NoDynamics(), "slate_size": 1})
    spec = with_overrides(spec, {"drift.noise_std": 0.0, "drift.mean_reversion": 0.0})
    env = build_environment(spec)
    res = run_arms(env, {"c": ConstantPolicy([0])}, users=20000, steps=1, seed=0)
    u = res.initial
    x = env.catalog.features[0]
    t, c0 = spec.choice.temperature, spec.choice.no_click_utility
    p = torch.sigmoid(((u @ x) + env.catalog.appeal[0] - c0) / t)
    assert res.arms["c"].summaries["expected_engagement"][0] == pytest.approx(
        float(p.mean()), abs=1e-5
    )
    assert res.arms["c"].summaries["engagement"][0] == pytest.approx(float(p.mean()), abs=0.01)


def test_evans_centrists_never_change_and_myopic_oracle_induces_no_shift():
    spec = get_scenario("evans-polarization-v1")
    env = build_environment(spec)
    res = run_arms(
        env, {"o": OracleGreedy(), "r": UniformRandom()}, users=500, steps=30, seed=0, reference="r"
    )
    centrist = res.types == 4
    assert centrist.any()
    for rec in res.arms.values():
        assert torch.equal(rec.final[centrist], res.initial[centrist])
    # the oracle greedy shows each user their own best wing: never opposite-wing content,
    # so it never changes anybody; random exposure does
    assert torch.equal(res.arms["o"].final, res.initial)
    assert res.arms["r"].summaries["shift"][-1] > 0
    # always-right for a strong-right user: 0.4 per step, 12 expected clicks in 30 steps
    strong_right = res.types == 1
    clicks = res.arms["o"].clicks[strong_right].mean()
    assert float(clicks) == pytest.approx(12.0, abs=0.6)


def test_device_cuda_without_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(SpecError, match="no CUDA device"):
        build_environment(TINY, "cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_run_matches_cpu_closely():
    cpu = run_arms(build_environment(TINY), {"o": OracleGreedy()}, users=64, steps=5, seed=0)
    gpu = run_arms(
        build_environment(TINY, "cuda"), {"o": OracleGreedy()}, users=64, steps=5, seed=0
    )
    assert torch.equal(cpu.initial, gpu.initial.cpu())
    assert gpu.arms["o"].final.device.type == "cuda"
