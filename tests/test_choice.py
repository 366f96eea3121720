"""Hand-computed checks of the choice models in ``simulator.choice``.

Every model returns ``[B, k + 1]`` probabilities: the k slots in slate order, then the
no-click option. Expected numbers are worked out in the comments next to each assert.
"""

from __future__ import annotations

import math

import pytest
import torch

from simulator.choice import (
    MNL,
    Argmax,
    ClickProb,
    Proportional,
    build_choice,
    click_utility,
    position_weights,
    sample_choice,
)
from simulator.specs import ArgmaxChoice, ClickProbChoice, MNLChoice, ProportionalChoice

F64 = torch.float64


def t(x) -> torch.Tensor:
    return torch.tensor(x, dtype=F64)


def one_user(u, items, appeal=None):
    """Batch of one user: u [1, d], items [1, k, d], appeal [1, k]."""
    items_t = t(items)[None]
    k = items_t.shape[1]
    app = torch.zeros(1, k, dtype=F64) if appeal is None else t(appeal)[None]
    return t(u)[None], items_t, app


def close(actual: torch.Tensor, expected, tol: float = 1e-12) -> None:
    torch.testing.assert_close(actual, t(expected).reshape(actual.shape), rtol=tol, atol=tol)


# --------------------------------------------------------------------------- helpers
def test_click_utility_is_dot_plus_appeal() -> None:
    u = t([[1.0, 2.0], [0.5, -1.0]])
    items = t([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], [[2.0, 2.0], [0.0, 0.0], [-1.0, 1.0]]])
    appeal = t([[0.0, 0.5, -1.0], [1.0, 0.0, 0.25]])
    # user 0: <u,x> = 1, 2, 3; + appeal 0, 0.5, -1 -> 1, 2.5, 2
    # user 1: <u,x> = 1 - 2 = -1, 0, -0.5 - 1 = -1.5; + appeal 1, 0, 0.25 -> 0, 0, -1.25
    close(click_utility(u, items, appeal), [[1.0, 2.5, 2.0], [0.0, 0.0, -1.25]])


def test_position_weights_are_powers_of_the_bias() -> None:
    close(position_weights(4, 0.5, t([0.0])), [1.0, 0.5, 0.25, 0.125])
    close(position_weights(3, 1.0, t([0.0])), [1.0, 1.0, 1.0])


def test_build_choice_dispatches_on_kind() -> None:
    assert isinstance(build_choice(MNLChoice()), MNL)
    assert isinstance(build_choice(ProportionalChoice()), Proportional)
    assert isinstance(build_choice(ArgmaxChoice()), Argmax)
    assert isinstance(build_choice(ClickProbChoice()), ClickProb)


# ------------------------------------------------------------------------------- MNL
def test_mnl_with_outside_option_hand_values() -> None:
    # u = (1, 0); items (1, 0), (0, 1), (-1, 0): utilities 1, 0, -1.
    # T = 0.5 -> logits 2, 0, -2; c0 = 0 -> outside logit 0.
    # Z = e^2 + 1 + e^-2 + 1.
    u, items, app = one_user([1.0, 0.0], [[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    p = MNL(MNLChoice(temperature=0.5, no_click_utility=0.0)).probabilities(u, items, app)
    z = math.exp(2) + 1 + math.exp(-2) + 1
    close(p, [math.exp(2) / z, 1 / z, math.exp(-2) / z, 1 / z])


def test_mnl_outside_utility_and_appeal_enter_the_logits() -> None:
    # utilities <u,x> + appeal = 0.5 + 0.5 = 1.0 and 0 + 0 = 0; T = 1, c0 = 1
    # P = (e^1, e^0, e^1) / (2e + 1)
    u, items, app = one_user([1.0, 0.0], [[0.5, 0.0], [0.0, 1.0]], appeal=[0.5, 0.0])
    p = MNL(MNLChoice(temperature=1.0, no_click_utility=1.0)).probabilities(u, items, app)
    z = 2 * math.e + 1
    close(p, [math.e / z, 1 / z, math.e / z])


def test_mnl_without_outside_option_never_leaves_mass_for_no_click() -> None:
    # logits 2, 0, -2 (T = 0.5): P = softmax over the slate only, P(no click) = 0 exactly.
    u, items, app = one_user([1.0, 0.0], [[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    p = MNL(MNLChoice(temperature=0.5, no_click_utility=None)).probabilities(u, items, app)
    z = math.exp(2) + 1 + math.exp(-2)
    close(p, [math.exp(2) / z, 1 / z, math.exp(-2) / z, 0.0])
    assert p[0, -1].item() == 0.0


def test_mnl_temperature_scales_the_logits() -> None:
    # utilities 1 and 0, no outside option: P(slot 0) = 1 / (1 + exp(-1/T))
    u, items, app = one_user([1.0], [[1.0], [0.0]])
    for temp in (2.0, 1.0, 0.25):
        p = MNL(MNLChoice(temperature=temp, no_click_utility=None)).probabilities(u, items, app)
        p0 = 1 / (1 + math.exp(-1 / temp))
        close(p, [p0, 1 - p0, 0.0])
    # T -> 0 is the argmax limit
    p = MNL(MNLChoice(temperature=1e-3, no_click_utility=None)).probabilities(u, items, app)
    close(p, [1.0, 0.0, 0.0])


def test_mnl_position_bias_multiplies_by_bias_to_the_slot() -> None:
    # equal utilities 0, T = 1, bias 0.5: weights 1, 1/2, 1/4.
    u, items, app = one_user([1.0], [[0.0], [0.0], [0.0]])
    p = MNL(MNLChoice(temperature=1.0, no_click_utility=None, position_bias=0.5)).probabilities(
        u, items, app
    )
    close(p, [4 / 7, 2 / 7, 1 / 7, 0.0])  # (1, 0.5, 0.25) / 1.75
    # with an outside option of utility 0 (weight e^0 = 1, no position weight):
    p = MNL(MNLChoice(temperature=1.0, no_click_utility=0.0, position_bias=0.5)).probabilities(
        u, items, app
    )
    close(p, [1 / 2.75, 0.5 / 2.75, 0.25 / 2.75, 1 / 2.75])


def test_mnl_position_bias_with_temperature() -> None:
    # P(i) = w_i exp(s_i / T) / (exp(c0 / T) + sum_j w_j exp(s_j / T))
    # s = (0.2, 0.4), T = 0.2 -> exp(1), exp(2); w = (1, 0.8); c0 = 0.1 -> exp(0.5)
    u, items, app = one_user([1.0], [[0.2], [0.4]])
    p = MNL(MNLChoice(temperature=0.2, no_click_utility=0.1, position_bias=0.8)).probabilities(
        u, items, app
    )
    a, b, c = math.exp(1.0), 0.8 * math.exp(2.0), math.exp(0.5)
    close(p, [a / (a + b + c), b / (a + b + c), c / (a + b + c)], tol=1e-10)


# ---------------------------------------------------------------------- proportional
def test_proportional_recsim_formula_hand_values() -> None:
    # RecSim: P(i) = (u.x_i + 1) / (sum_j (u.x_j + 1) + 2), one-hot topics.
    # u = (0.5, -0.2, 1.0, -1.0); slate topics 0, 1, 3 -> u.x = 0.5, -0.2, -1.0
    # weights 1.5, 0.8, 0.0 and no-click mass 2: total 4.3
    eye = torch.eye(4, dtype=F64)
    u = t([[0.5, -0.2, 1.0, -1.0]])
    items = eye[[0, 1, 3]][None]
    p = Proportional(ProportionalChoice()).probabilities(u, items, torch.zeros(1, 3, dtype=F64))
    close(p, [1.5 / 4.3, 0.8 / 4.3, 0.0, 2.0 / 4.3])


def test_proportional_matches_recsim_formula_on_a_batch() -> None:
    gen = torch.Generator().manual_seed(11)
    n, d, k = 64, 6, 4
    u = torch.rand(n, d, generator=gen, dtype=F64) * 2 - 1
    topics = torch.randint(d, (n, k), generator=gen)
    items = torch.eye(d, dtype=F64)[topics]
    p = Proportional(ProportionalChoice()).probabilities(u, items, torch.zeros(n, k, dtype=F64))
    ux = u.gather(1, topics)  # u.x_i for one-hot x_i
    denom = (ux + 1).sum(dim=1, keepdim=True) + 2
    expected = torch.cat([(ux + 1) / denom, 2 / denom], dim=1)
    torch.testing.assert_close(p, expected, rtol=1e-12, atol=1e-12)


def test_proportional_clips_scores_below_min_score() -> None:
    # utilities -0.8 + appeal -0.5 = -1.3 (clipped to weight 0) and 0.0 (weight 1); mass 2
    u, items, app = one_user([-0.8, 0.0], [[1.0, 0.0], [0.0, 1.0]], appeal=[-0.5, 0.0])
    p = Proportional(ProportionalChoice()).probabilities(u, items, app)
    close(p, [0.0, 1 / 3, 2 / 3])


def test_proportional_position_bias_and_custom_min_score() -> None:
    # min_score 0, mass 1, bias 0.5; utilities 0.4, 0.4, 0.4 -> weights 0.4, 0.2, 0.1
    # total 0.7 + 1 = 1.7
    u, items, app = one_user([1.0], [[0.4], [0.4], [0.4]])
    spec = ProportionalChoice(min_score=0.0, no_click_mass=1.0, position_bias=0.5)
    p = Proportional(spec).probabilities(u, items, app)
    close(p, [0.4 / 1.7, 0.2 / 1.7, 0.1 / 1.7, 1.0 / 1.7])


def test_proportional_all_zero_weights_means_no_click() -> None:
    # no mass and every score at or below min_score: total 0 -> the user does not click
    u, items, app = one_user([-1.0], [[1.0], [2.0]])
    p = Proportional(ProportionalChoice(no_click_mass=0.0)).probabilities(u, items, app)
    close(p, [0.0, 0.0, 1.0])


# ---------------------------------------------------------------------------- argmax
def test_argmax_picks_the_best_slot_and_always_clicks_without_threshold() -> None:
    # utilities -0.5, -0.1, -0.3: best is slot 1 even though all are negative
    u, items, app = one_user([1.0], [[-0.5], [-0.1], [-0.3]])
    p = Argmax(ArgmaxChoice(no_click_utility=None)).probabilities(u, items, app)
    close(p, [0.0, 1.0, 0.0, 0.0])


def test_argmax_appeal_counts() -> None:
    # utilities 0.5 + 0 = 0.5 and 0.3 + 0.4 = 0.7 -> slot 1
    u, items, app = one_user([1.0], [[0.5], [0.3]], appeal=[0.0, 0.4])
    close(Argmax(ArgmaxChoice()).probabilities(u, items, app), [0.0, 1.0, 0.0])


def test_argmax_no_click_threshold() -> None:
    u = t([[1.0], [1.0], [1.0]])
    # user 0: best 0.2 < 0.25 -> no click; user 1: best exactly 0.25 >= 0.25 -> clicks
    # slot 1; user 2: best 0.9 -> clicks slot 0
    items = t([[[0.2], [0.1]], [[0.1], [0.25]], [[0.9], [0.3]]])
    p = Argmax(ArgmaxChoice(no_click_utility=0.25)).probabilities(
        u, items, torch.zeros(3, 2, dtype=F64)
    )
    close(p, [[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


def test_argmax_ties_go_to_the_earlier_slot() -> None:
    # utilities 0.3, 0.7, 0.7, 0.7 -> slot 1 (first of the tied maxima)
    u, items, app = one_user([1.0], [[0.3], [0.7], [0.7], [0.7]])
    close(Argmax(ArgmaxChoice()).probabilities(u, items, app), [0.0, 1.0, 0.0, 0.0, 0.0])
    # all tied over a wide slate: slot 0
    u = torch.ones(3, 1, dtype=F64)
    items = torch.zeros(3, 40, 1, dtype=F64)
    p = Argmax(ArgmaxChoice()).probabilities(u, items, torch.zeros(3, 40, dtype=F64))
    assert p[:, 0].tolist() == [1.0, 1.0, 1.0]
    assert p.sum().item() == 3.0


# ------------------------------------------------------------------------ click prob
def test_click_prob_single_item_slate_is_the_preference_coordinate() -> None:
    # Evans-Kasirzadeh: theta = (0.1, 0.25, 0.4); one right item -> P(click) = 0.4
    u = t([[0.1, 0.25, 0.4], [0.1, 0.25, 0.4]])
    items = t([[[0.0, 0.0, 1.0]], [[0.0, 1.0, 0.0]]])
    p = ClickProb(ClickProbChoice()).probabilities(u, items, torch.zeros(2, 1, dtype=F64))
    close(p, [[0.4, 0.6], [0.25, 0.75]])


def test_click_prob_examines_one_slot_uniformly_and_clips() -> None:
    # slate (left, right), theta_L = 0.1, theta_R = 0.4 -> P = (0.1 / 2, 0.4 / 2), no click 0.75
    u, items, app = one_user([0.1, 0.25, 0.4], [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    close(ClickProb(ClickProbChoice()).probabilities(u, items, app), [0.05, 0.2, 0.75])
    # utilities 1.5 (clipped to 1) and -0.3 (clipped to 0): P = (1/2, 0, 1/2)
    u, items, app = one_user([1.0], [[1.5], [-0.3]])
    close(ClickProb(ClickProbChoice()).probabilities(u, items, app), [0.5, 0.0, 0.5])


# ------------------------------------------------------------------ all the models
MODELS = [
    MNL(MNLChoice(temperature=0.3, no_click_utility=0.2)),
    MNL(MNLChoice(temperature=0.05, no_click_utility=None, position_bias=0.7)),
    Proportional(ProportionalChoice()),
    Proportional(ProportionalChoice(min_score=-0.5, no_click_mass=0.0, position_bias=0.9)),
    Argmax(ArgmaxChoice()),
    Argmax(ArgmaxChoice(no_click_utility=0.1)),
    ClickProb(ClickProbChoice()),
]


@pytest.mark.parametrize("model", MODELS, ids=lambda m: f"{type(m).__name__}-{m.spec!r}")
def test_probabilities_are_a_distribution(model) -> None:
    gen = torch.Generator().manual_seed(3)
    n, k, d = 200, 5, 4
    u = torch.randn(n, d, generator=gen, dtype=F64)
    u = u / u.norm(dim=1, keepdim=True)
    items = torch.randn(n, k, d, generator=gen, dtype=F64)
    items = items / items.norm(dim=2, keepdim=True)
    appeal = 0.2 * torch.randn(n, k, generator=gen, dtype=F64)
    p = model.probabilities(u, items, appeal)
    assert p.shape == (n, k + 1)
    assert (p >= 0).all()
    torch.testing.assert_close(p.sum(dim=1), torch.ones(n, dtype=F64), rtol=0, atol=1e-12)


# ---------------------------------------------------------------------- sampling
def test_sample_choice_inverse_cdf_known_uniforms() -> None:
    # probs (0.25, 0.25, 0, | no click 0.5): CDF 0.25, 0.5, 0.5, 1.0.
    # slot = number of CDF values <= U; the zero-probability slot 2 is skipped.
    probs = torch.tensor([[0.25, 0.25, 0.0, 0.5]]).expand(8, 4)
    uniform = torch.tensor([0.0, 0.1, 0.2499, 0.25, 0.4999, 0.5, 0.75, 0.9999])
    assert sample_choice(probs, uniform).tolist() == [0, 0, 0, 1, 1, -1, -1, -1]


def test_sample_choice_skips_zero_probability_slots_on_a_dense_grid() -> None:
    # slots 0, 2 and 4 have probability 0 (slot 0 even at U = 0)
    probs = torch.tensor([[0.0, 0.375, 0.0, 0.5, 0.0, 0.125]])
    uniform = torch.arange(4096, dtype=torch.float32) / 4096
    slot = sample_choice(probs.expand(4096, -1), uniform)
    assert set(slot.tolist()) == {1, 3, -1}
    # boundaries: [0, 0.375) -> 1, [0.375, 0.875) -> 3, [0.875, 1) -> no click
    assert (slot[uniform < 0.375] == 1).all()
    assert (slot[(uniform >= 0.375) & (uniform < 0.875)] == 3).all()
    assert (slot[uniform >= 0.875] == -1).all()


def test_sample_choice_returns_minus_one_only_for_no_click() -> None:
    # always click: all mass on the slate, never -1 for a grid of uniforms below 1
    probs = torch.tensor([[0.5, 0.5, 0.0]])
    uniform = torch.arange(1024, dtype=torch.float32) / 1024
    slot = sample_choice(probs.expand(1024, -1), uniform)
    assert (slot >= 0).all()
    # never click: all mass on the outside option
    probs = torch.tensor([[0.0, 0.0, 1.0]])
    assert (sample_choice(probs.expand(1024, -1), uniform) == -1).all()


def test_sample_choice_frequencies_match_probabilities() -> None:
    gen = torch.Generator().manual_seed(5)
    n = 200_000
    probs = torch.tensor([[0.1, 0.2, 0.0, 0.3, 0.4]]).expand(n, -1)
    slot = sample_choice(probs, torch.rand(n, generator=gen))
    freq = [float((slot == s).double().mean()) for s in (0, 1, 2, 3, -1)]
    # standard error <= sqrt(0.25 / 2e5) ~ 0.0011
    assert freq[2] == 0.0
    for f, p in zip(freq, [0.1, 0.2, 0.0, 0.3, 0.4], strict=True):
        assert abs(f - p) < 0.006


# torch.rand (float32) returns values up to 1 - 2**-24. With no outside option the CDF of
# the slate can end just below that in float32 (here at 1 - 2**-24 itself), so the count of
# CDF values <= U reaches k + 1, is clamped to k, and comes back as "no click" although
# P(no click) is exactly 0.
MAX_UNIFORM = 1.0 - 2.0**-24


def test_sample_choice_never_picks_a_zero_probability_no_click_near_one() -> None:
    # the largest float32 torch.rand can return is below 1
    assert float(torch.tensor(MAX_UNIFORM, dtype=torch.float32)) < 1.0
    # MNL, T = 1, no outside option, utilities 0, 0.75, 1.0 (float32):
    # probs ~ (0.1714, 0.3628, 0.4658, 0); float32 CDF ends at 0.99999994 = 1 - 2**-24
    mnl = MNL(MNLChoice(temperature=1.0, no_click_utility=None))
    u = torch.tensor([[1.0]])
    p = mnl.probabilities(u, torch.tensor([[[0.0], [0.75], [1.0]]]), torch.zeros(1, 3))
    assert p[0, -1].item() == 0.0
    # proportional, no no-click mass: weights 1.1, 1.2, 1.4 over 3.7; CDF ends at 0.99999988
    prop = Proportional(ProportionalChoice(no_click_mass=0.0))
    q = prop.probabilities(u, torch.tensor([[[0.1], [0.2], [0.4]]]), torch.zeros(1, 3))
    assert q[0, -1].item() == 0.0
    uniform = torch.tensor([MAX_UNIFORM])
    assert sample_choice(p, uniform).item() == 2
    assert sample_choice(q, uniform).item() == 2
