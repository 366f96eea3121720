"""The learners: determinism, penalties, the safe policy format, and what they learn."""

from __future__ import annotations

import json

import pytest
import torch

from recommenders.baselines import UniformRandom
from recommenders.penalties import RewardParts, shaped_reward
from recommenders.registry import make_policy
from recommenders.rl.agent import sample_slate, slate_log_prob
from recommenders.rl.policy import LearnedPolicy, PolicyBundle, model_from_bundle
from recommenders.rl.ppo import PPOConfig, train_ppo
from simulator.engine import build_environment, run_arms
from simulator.errors import SpecError
from simulator.scenarios import get_scenario

TINY = get_scenario("topics-tiny-v1")
SMALL = {"users": 64, "iterations": 2, "epochs": 1, "minibatches": 2}


def _train(**kw):
    return train_ppo(TINY, PPOConfig(**{**SMALL, **kw}), kind="ppo", natural=UniformRandom)


def test_same_seed_same_weights_and_history():
    a, b = _train(seed=3), _train(seed=3)
    assert a.bundle.weights == b.bundle.weights
    assert [r["charts/clicks_per_user_step"] for r in a.history] == [
        r["charts/clicks_per_user_step"] for r in b.history
    ]
    assert _train(seed=4).bundle.weights != a.bundle.weights


@pytest.mark.parametrize("penalty", ["safe-shift", "distance", "path-specific"])
def test_penalty_weight_zero_reproduces_the_unpenalized_learner(penalty):
    plain = _train(seed=1)
    zero = _train(seed=1, penalty=penalty, penalty_weight=0.0)
    assert zero.bundle.weights == plain.bundle.weights


def test_shaped_rewards_by_hand():
    p = RewardParts(
        click=torch.tensor([0.5]),
        click_initial=torch.tensor([0.2]),
        click_natural=torch.tensor([0.4]),
        distance=torch.tensor([0.3]),
        clicked=torch.tensor([1.0]),
    )
    assert float(shaped_reward("none", 9.0, p)) == pytest.approx(0.5)
    assert float(shaped_reward("safe-shift", 2.0, p)) == pytest.approx(0.5 + 2.0 * 0.3)
    assert float(shaped_reward("distance", 2.0, p)) == pytest.approx(0.5 - 0.6)
    assert float(shaped_reward("path-specific", 1.0, p)) == pytest.approx(0.4)
    assert float(shaped_reward("path-specific", 0.25, p)) == pytest.approx(0.75 * 0.5 + 0.25 * 0.4)


def test_config_validation():
    with pytest.raises(ValueError):
        PPOConfig(gamma=1.5)
    with pytest.raises(ValueError):
        PPOConfig(penalty_weight=-1)
    with pytest.raises(ValueError):
        PPOConfig(penalty="path-specific", penalty_weight=2)


def _masked_log_prob(logits, slate):
    """Reference: one masked logsumexp per slot."""
    mask = torch.zeros_like(logits, dtype=torch.bool)
    total = torch.zeros(logits.shape[0], dtype=torch.float64)
    for j in range(slate.shape[1]):
        masked = logits.double().masked_fill(mask, float("-inf"))
        pick = slate[:, j : j + 1]
        total += masked.gather(1, pick).squeeze(1) - torch.logsumexp(masked, dim=1)
        mask = mask.scatter(1, pick, True)
    return total


def test_plackett_luce_log_prob_matches_the_masked_definition():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(300, 50, generator=g) * 4
    logits[:10, 0] = 40.0  # one item holds almost all the mass
    slate = sample_slate(logits, 6, g)
    assert torch.allclose(
        slate_log_prob(logits, slate).double(), _masked_log_prob(logits, slate), atol=1e-4
    )


def test_plackett_luce_log_prob_by_hand():
    logits = torch.log(torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
    # P(3 then 1) = 4/10 * 2/6
    lp = slate_log_prob(logits, torch.tensor([[3, 1]]))
    assert float(lp.exp()) == pytest.approx(0.4 * 2 / 6, rel=1e-6)
    # Gumbel top-k draws the first item with probability proportional to exp(logit)
    g = torch.Generator().manual_seed(0)
    many = sample_slate(logits.expand(40000, -1), 2, g)
    freq = torch.bincount(many[:, 0], minlength=4).float() / 40000
    assert torch.allclose(freq, torch.tensor([0.1, 0.2, 0.3, 0.4]), atol=0.01)
    assert (many[:, 0] != many[:, 1]).all()


def test_bundle_round_trip_and_refusals(tmp_path):
    res = _train(seed=0)
    res.bundle.save(tmp_path / "p")
    again = PolicyBundle.load(tmp_path / "p")
    m1, m2 = model_from_bundle(res.bundle), model_from_bundle(again)
    obs = torch.randn(5, m1.obs_dim, generator=torch.Generator().manual_seed(0))
    assert torch.equal(m1.logits(obs), m2.logits(obs))
    # a pickle in place of the weights
    (tmp_path / "p" / "policy.safetensors").write_bytes(b"\x80\x04\x95pickle")
    with pytest.raises(SpecError, match="not a safetensors"):
        model_from_bundle(PolicyBundle.load(tmp_path / "p"))
    # weights that do not match the config
    cfg = dict(res.bundle.config, hidden=32)
    with pytest.raises(SpecError, match="do not match"):
        model_from_bundle(PolicyBundle(config=cfg, weights=res.bundle.weights))
    with pytest.raises(SpecError, match="format"):
        model_from_bundle(PolicyBundle(config={"format": "pickle"}, weights=res.bundle.weights))
    (tmp_path / "p" / "policy.json").write_text(json.dumps([1, 2]))
    with pytest.raises(SpecError, match="JSON object"):
        PolicyBundle.load(tmp_path / "p")


def test_learned_policy_refuses_another_catalog():
    res = _train(seed=0)
    env = build_environment(get_scenario("topics-v1"))
    with pytest.raises(SpecError, match="trained for 30 items"):
        run_arms(env, {"p": LearnedPolicy(res.bundle)}, users=4, steps=1, seed=0)


def test_trained_kinds_need_a_bundle():
    with pytest.raises(SpecError, match="must be trained first"):
        make_policy("ppo")


@pytest.mark.slow
def test_evans_long_horizon_learner_polarizes_for_clicks_and_myopic_does_not():
    """At small scale: the discount-0.99 learner earns more clicks than the discount-0
    learner from right-dominant users by first showing them left content; the myopic
    learner changes nobody; centrists never change."""
    spec = get_scenario("evans-polarization-v1")
    env = build_environment(spec)
    out = {}
    for gamma in (0.0, 0.99):
        r = train_ppo(
            spec,
            PPOConfig(gamma=gamma, users=4096, iterations=30),
            kind="ppo",
            natural=UniformRandom,
        )
        res = run_arms(
            env,
            {"l": LearnedPolicy(r.bundle), "n": UniformRandom()},
            users=1000,
            steps=30,
            seed=5,
            reference="n",
            record_full=True,
        )
        out[gamma] = res
    myo, rl = out[0.0], out[0.99]
    strong_right = myo.types == 1
    moderate_right = myo.types == 0
    centrist = myo.types == 4
    c_myo = myo.arms["l"].clicks
    c_rl = rl.arms["l"].clicks
    assert float(c_rl[strong_right].mean()) > float(c_myo[strong_right].mean()) + 1.0
    assert float(c_rl[moderate_right].mean()) > float(c_myo[moderate_right].mean()) + 1.0
    # myopic: always the user's own best wing, so no preference ever changes
    assert torch.equal(myo.arms["l"].final, myo.initial)
    # the long-horizon learner shows left content (item 0) to right-dominant users early
    first_slates = rl.arms["l"].slates[0][strong_right, 0]
    assert float((first_slates == 0).float().mean()) > 0.9
    assert float(rl.arms["l"].final[strong_right, 2].mean()) > 0.5  # theta_R up from 0.4
    for res in out.values():
        assert torch.equal(res.arms["l"].final[centrist], res.initial[centrist])


@pytest.mark.slow
def test_polarity_long_horizon_learner_shifts_more_and_the_penalty_brings_it_down():
    """polarity-1d-v1 at small scale: induced shift ppo > ppo-myopic > natural (0), and the
    distance penalty (weight 2) lowers the shift below the unpenalized learner's while
    keeping most of its engagement."""
    spec = get_scenario("polarity-1d-v1")
    env = build_environment(spec)
    figures = {}
    for name, kw in {
        "myopic": {"gamma": 0.0},
        "ppo": {"gamma": 0.99},
        "penalized": {"gamma": 0.99, "penalty": "distance", "penalty_weight": 2.0},
    }.items():
        r = train_ppo(
            spec, PPOConfig(users=1024, iterations=40, **kw), kind="ppo", natural=UniformRandom
        )
        res = run_arms(
            env,
            {"l": LearnedPolicy(r.bundle), "n": UniformRandom()},
            users=2000,
            steps=50,
            seed=7,
            reference="n",
        )
        s = res.arms["l"].summaries
        figures[name] = (sum(s["engagement"]) / 50, s["induced_shift"][-1])
    (e_my, i_my), (e_rl, i_rl), (e_pen, i_pen) = (
        figures["myopic"],
        figures["ppo"],
        figures["penalized"],
    )
    assert i_rl > i_my > 0.0
    assert e_rl > e_my
    assert i_pen < i_rl
    # most of it: 0.308 against 0.405 clicks per user-step (76%) with one-thread training
    assert e_pen > 0.7 * e_rl
