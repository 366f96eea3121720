"""Hand-computed checks of the preference dynamics in ``simulator.dynamics``.

A model's ``step(u, u0, items [B, k, d], slot [B], uniform [B] | None)`` returns the new
preferences. Computations run in float64 so that geometric identities hold to 1e-12.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from simulator.dynamics import (
    Anchored,
    Assimilation,
    Confidence,
    Evans,
    Interest,
    Static,
    TRecs,
    angle,
    build_dynamics,
    slerp_toward,
)
from simulator.geometry import random_unit
from simulator.metrics import bimodality_coefficient
from simulator.specs import (
    AnchoredDynamics,
    BiasedAssimilation,
    BoundedConfidence,
    EvansPolarization,
    NoDynamics,
    RecSimInterest,
    TRecsDrift,
)

F64 = torch.float64
TOL = 1e-12


def t(x) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.to(F64)
    return torch.tensor(x, dtype=F64)


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def close(actual: torch.Tensor, expected, tol: float = TOL) -> None:
    exp = expected if isinstance(expected, torch.Tensor) else t(expected)
    torch.testing.assert_close(
        actual, exp.reshape(actual.shape).to(actual.dtype), rtol=tol, atol=tol
    )


def show_one(model, u, x, *, slot=0, uniform=None, u0=None):
    """Show the single item x (one per user) and let each user take ``slot`` (0 or -1)."""
    u = t(u) if not isinstance(u, torch.Tensor) else u
    x = t(x) if not isinstance(x, torch.Tensor) else x
    if u.dim() == 1:
        u = u[None]
    if x.dim() == 1:
        x = x[None].expand(u.shape[0], -1)
    b = u.shape[0]
    slots = (
        torch.full((b,), slot, dtype=torch.long) if isinstance(slot, int) else torch.tensor(slot)
    )
    unif = None if uniform is None else (t(uniform) * torch.ones(b, dtype=F64))
    return model.step(u, u if u0 is None else u0, x[:, None, :], slots, unif)


def test_build_dynamics_dispatches_on_kind() -> None:
    assert isinstance(build_dynamics(NoDynamics()), Static)
    assert isinstance(build_dynamics(TRecsDrift()), TRecs)
    assert isinstance(build_dynamics(BiasedAssimilation()), Assimilation)
    assert isinstance(build_dynamics(BoundedConfidence()), Confidence)
    assert isinstance(build_dynamics(AnchoredDynamics()), Anchored)
    assert isinstance(build_dynamics(RecSimInterest()), Interest)
    assert isinstance(build_dynamics(EvansPolarization()), Evans)
    assert build_dynamics(RecSimInterest()).needs_uniform
    assert build_dynamics(EvansPolarization()).needs_uniform
    assert not build_dynamics(TRecsDrift()).needs_uniform


def test_static_never_changes_preferences() -> None:
    u = t([[0.6, 0.8], [1.0, 0.0]])
    out = Static(NoDynamics()).step(
        u, u, t([[[1.0, 0.0]], [[0.0, 1.0]]]), torch.tensor([0, 0]), None
    )
    assert torch.equal(out, u)


# --------------------------------------------------------------------------- T-RECS
def test_trecs_hand_example_quarter_turn() -> None:
    # u = 2 (1, 0), item (0, 3): angle pi/2; delta = 0.5 -> angle pi/4 to the item, norm 2
    out = show_one(TRecs(TRecsDrift(delta=0.5)), [2.0, 0.0], [0.0, 3.0])
    close(out, [2 * math.cos(math.pi / 4), 2 * math.sin(math.pi / 4)])
    # delta = 0.25 -> the angle to the item becomes 3/4 * pi/2 = 3 pi/8, so u is at pi/8
    out = show_one(TRecs(TRecsDrift(delta=0.25)), [2.0, 0.0], [0.0, 3.0])
    close(out, [2 * math.cos(math.pi / 8), 2 * math.sin(math.pi / 8)])


@pytest.mark.parametrize("delta", [0.05, 0.1, 0.3, 0.5, 0.9])
def test_trecs_keeps_norm_and_scales_angle_by_one_minus_delta(delta: float) -> None:
    gen = torch.Generator().manual_seed(1)
    n, d = 256, 5
    u = torch.randn(n, d, generator=gen, dtype=F64) * 1.7  # norms far from 1
    x = torch.randn(n, d, generator=gen, dtype=F64)
    out = TRecs(TRecsDrift(delta=delta)).step(
        u, u, x[:, None], torch.zeros(n, dtype=torch.long), None
    )
    close(out.norm(dim=1), u.norm(dim=1))
    close(angle(out, x), (1 - delta) * angle(u, x), tol=1e-9)
    # the rotation stays in the plane of u and x: the angle to u is delta * angle(u, x)
    close(angle(out, u), delta * angle(u, x), tol=1e-9)


def test_trecs_delta_zero_is_bitwise_identity() -> None:
    gen = torch.Generator().manual_seed(2)
    u = torch.randn(32, 4, generator=gen, dtype=F64)
    x = torch.randn(32, 4, generator=gen, dtype=F64)
    out = TRecs(TRecsDrift(delta=0.0)).step(
        u, u, x[:, None], torch.zeros(32, dtype=torch.long), None
    )
    assert torch.equal(out, u)


def test_trecs_delta_one_gives_the_item_direction_at_the_users_norm() -> None:
    gen = torch.Generator().manual_seed(3)
    u = torch.randn(32, 4, generator=gen, dtype=F64)
    x = torch.randn(32, 4, generator=gen, dtype=F64)
    out = TRecs(TRecsDrift(delta=1.0)).step(
        u, u, x[:, None], torch.zeros(32, dtype=torch.long), None
    )
    close(out, u.norm(dim=1, keepdim=True) * unit(x))


def test_trecs_leaves_aligned_and_opposite_users_alone() -> None:
    # angle 0: nothing to do; angle pi: no unique direction, kept as is
    u = t([[1.0, 0.0], [1.0, 0.0]])
    x = t([[[2.0, 0.0]], [[-1.0, 0.0]]])
    out = TRecs(TRecsDrift(delta=0.5)).step(u, u, x, torch.tensor([0, 0]), None)
    assert torch.equal(out, u)


def test_slerp_toward_with_per_user_fraction() -> None:
    # u = (1, 0), x = (0, 1): fractions 0, 1/3, 1 -> angles from u of 0, pi/6, pi/2
    u = t([[1.0, 0.0]] * 3)
    x = t([[0.0, 1.0]] * 3)
    out = slerp_toward(u, x, t([0.0, 1 / 3, 1.0]))
    close(out, [[1.0, 0.0], [math.cos(math.pi / 6), math.sin(math.pi / 6)], [0.0, 1.0]])


def test_trecs_applies_the_shown_items_in_slate_order() -> None:
    # two items, exposure weight 1: u moves toward item 0, then toward item 1
    spec = TRecsDrift(delta=0.5, exposure_weight=1.0)
    u = t([[1.0, 0.0, 0.0]])
    items = t([[[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])
    out = TRecs(spec).step(u, u, items, torch.tensor([1]), None)
    first = slerp_toward(u, items[:, 0], t([0.5]))
    close(out, slerp_toward(first, items[:, 1], t([0.5])))
    # first step: (1, 1, 0)/sqrt2; second: halfway from it to e3 (angle pi/2 -> pi/4)
    close(out, [0.5, 0.5, math.sqrt(0.5)])


# -------------------------------------------------------------- biased assimilation
def test_assimilation_hand_example() -> None:
    # u = (0.6, 0.8), x = (1, 0), eta = 0.5: <u,x> = 0.6
    # u + 0.5 * 0.6 * x = (0.9, 0.8), norm sqrt(1.45)
    model = Assimilation(BiasedAssimilation(eta=0.5))
    close(show_one(model, [0.6, 0.8], [1.0, 0.0]), t([0.9, 0.8]) / math.sqrt(1.45))
    # a disliked item (<u,x> = -0.6) pushes u away: (-0.9, 0.8) / sqrt(1.45)
    close(show_one(model, [-0.6, 0.8], [1.0, 0.0]), t([-0.9, 0.8]) / math.sqrt(1.45))
    # an orthogonal item (<u,x> = 0) does nothing
    close(show_one(model, [0.0, 1.0], [1.0, 0.0]), [0.0, 1.0])


def test_assimilation_click_weight_scales_eta() -> None:
    # click weight 2 with eta 0.25 is eta * w = 0.5: same as the hand example
    model = Assimilation(BiasedAssimilation(eta=0.25, click_weight=2.0))
    close(show_one(model, [0.6, 0.8], [1.0, 0.0]), t([0.9, 0.8]) / math.sqrt(1.45))


_coord = st.floats(-1.0, 1.0, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(
    u=st.lists(_coord, min_size=3, max_size=3),
    x=st.lists(_coord, min_size=3, max_size=3),
    eta=st.floats(0.0, 10.0),
    w=st.floats(0.0, 3.0),
)
def test_assimilation_never_decreases_abs_projection(u, x, eta, w) -> None:
    ut, xt = t(u), t(x)
    assume(float(ut.norm()) > 1e-3 and float(xt.norm()) > 1e-3)
    ut, xt = unit(ut)[None], unit(xt)[None]
    model = Assimilation(BiasedAssimilation(eta=eta, click_weight=w))
    out = model.step(ut, ut, xt[:, None], torch.tensor([0]), None)
    before = float((ut * xt).sum().abs())
    after = float((out * xt).sum().abs())
    assert after >= before - 1e-12
    assert abs(float(out.norm()) - 1.0) < 1e-12


def test_assimilation_one_item_for_everybody_makes_the_population_bimodal() -> None:
    gen = torch.Generator().manual_seed(4)
    n = 2000
    # uniform on the 2-sphere: the projection on any axis is uniform on [-1, 1], BC ~ 5/9
    u = random_unit(n, 3, gen).double()
    x = t([0.0, 0.0, 1.0]).expand(n, 3)
    model = Assimilation(BiasedAssimilation(eta=0.5))
    z0 = u @ x[0]
    assert abs(bimodality_coefficient(z0) - 5 / 9) < 0.05
    prev = z0.abs()
    slot = torch.zeros(n, dtype=torch.long)
    for _ in range(40):
        u = model.step(u, u, x[:, None], slot, None)
        z = u @ x[0]
        assert (z.abs() >= prev - 1e-12).all()  # |<u, x>| never decreases, for every user
        assert torch.equal(torch.sign(z), torch.sign(z0))  # nobody crosses to the other pole
        prev = z.abs()
    bc = bimodality_coefficient(u @ x[0])
    assert bc > 5 / 9
    assert bc > 0.9  # two tight poles at +x and -x
    assert float((u @ x[0]).abs().median()) > 0.99


# --------------------------------------------------------------------------- anchored
def test_anchored_lam_one_returns_initial_preferences() -> None:
    gen = torch.Generator().manual_seed(5)
    u0 = unit(torch.randn(16, 3, generator=gen, dtype=F64))
    u = unit(torch.randn(16, 3, generator=gen, dtype=F64))
    x = unit(torch.randn(16, 1, 3, generator=gen, dtype=F64))
    model = Anchored(AnchoredDynamics(lam=1.0, inner=TRecsDrift(delta=0.5)))
    close(model.step(u, u0, x, torch.zeros(16, dtype=torch.long), None), u0)


@pytest.mark.parametrize(
    "inner",
    [TRecsDrift(delta=0.3), BiasedAssimilation(eta=0.4), BoundedConfidence(epsilon=3.0, mu=0.5)],
    ids=["trecs", "assimilation", "confidence"],
)
def test_anchored_lam_zero_equals_the_inner_model(inner) -> None:
    gen = torch.Generator().manual_seed(6)
    n = 16
    u0 = unit(torch.randn(n, 3, generator=gen, dtype=F64))
    u = unit(torch.randn(n, 3, generator=gen, dtype=F64))
    x = unit(torch.randn(n, 2, 3, generator=gen, dtype=F64))
    slot = torch.tensor([0, 1, -1, 0] * (n // 4))
    expected = build_dynamics(inner).step(u, u0, x, slot, None)
    got = Anchored(AnchoredDynamics(lam=0.0, inner=inner)).step(u, u0, x, slot, None)
    close(got, expected)
    assert not torch.allclose(got, u)  # the inner model did move somebody


def test_anchored_hand_example() -> None:
    # inner T-RECS with delta = 1 moves u = (1, 0) onto x = (0, 1); u0 = (1, 0), lam = 0.5
    # u' = normalize(0.5 (1, 0) + 0.5 (0, 1)) = (1, 1) / sqrt 2
    model = Anchored(AnchoredDynamics(lam=0.5, inner=TRecsDrift(delta=1.0)))
    out = show_one(model, [1.0, 0.0], [0.0, 1.0], u0=t([[1.0, 0.0]]))
    close(out, [math.sqrt(0.5), math.sqrt(0.5)])
    # lam = 0.25 and no click: u = (0, 1) is pulled toward u0 = (1, 0):
    # normalize(0.25 (1, 0) + 0.75 (0, 1)) = (1, 3) / sqrt(10)
    model = Anchored(AnchoredDynamics(lam=0.25, inner=TRecsDrift(delta=1.0)))
    out = show_one(model, [0.0, 1.0], [0.0, 1.0], slot=-1, u0=t([[1.0, 0.0]]))
    close(out, t([1.0, 3.0]) / math.sqrt(10))


# ----------------------------------------------------------------- bounded confidence
def test_bounded_confidence_moves_only_for_items_within_epsilon() -> None:
    model = Confidence(BoundedConfidence(epsilon=0.8, mu=0.2))
    u = t([[1.0, 0.0], [1.0, 0.0]])
    # item 0 at angle 0.5 < 0.8: the angle shrinks to 0.8 * 0.5 = 0.4, so u rotates by 0.1
    # item 1 at angle 1.0 > 0.8: ignored
    x = t([[math.cos(0.5), math.sin(0.5)], [math.cos(1.0), math.sin(1.0)]])
    out = show_one(model, u, x)
    close(out[0], [math.cos(0.1), math.sin(0.1)])
    assert torch.equal(out[1], u[1])


def test_bounded_confidence_ignores_far_items_even_under_exposure() -> None:
    model = Confidence(BoundedConfidence(epsilon=0.3, mu=1.0, exposure_weight=1.0))
    u = t([[1.0, 0.0, 0.0]])
    items = t([[[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]])  # all beyond 0.3 rad
    assert torch.equal(model.step(u, u, items, torch.tensor([1]), None), u)


# ---------------------------------------------------------------- RecSim interest
def test_recsim_interest_hand_update_for_known_uniforms() -> None:
    model = Interest(RecSimInterest(step=0.3))
    u = t([[0.2, -0.5, 0.6]] * 2)
    x = t([0.0, 0.0, 1.0])  # topic 2: u_k = 0.6
    # size = 0.3 (1 - 0.6)(1 - 0.6) = 0.048; up with probability (0.6 + 1)/2 = 0.8
    out = show_one(model, u, x, uniform=t([0.5, 0.9]))
    close(out[0], [0.2, -0.5, 0.648])  # U = 0.5 < 0.8: up
    close(out[1], [0.2, -0.5, 0.552])  # U = 0.9 >= 0.8: down
    assert torch.equal(out[:, :2], u[:, :2])  # only topic k changes, bit for bit


def test_recsim_interest_negative_interest() -> None:
    model = Interest(RecSimInterest(step=0.3))
    u = t([[0.2, -0.5, 0.6]] * 3)
    x = t([0.0, 1.0, 0.0])  # topic 1: u_k = -0.5
    # size = 0.3 (1 - 0.5)(1 + 0.5) = 0.225; up with probability 0.25
    out = show_one(model, u, x, uniform=t([0.1, 0.25, 0.7]))
    close(out[:, 1], [-0.275, -0.725, -0.725])  # U = 0.25 is not < 0.25: down
    assert torch.equal(out[:, [0, 2]], u[:, [0, 2]])


def test_recsim_interest_clips_to_the_box() -> None:
    # step 2, u_k = 0: size 2 -> 0 + 2 = 2 clipped to 1, or 0 - 2 = -2 clipped to -1
    model = Interest(RecSimInterest(step=2.0))
    u = t([[0.0, 0.3]] * 2)
    out = show_one(model, u, [1.0, 0.0], uniform=t([0.2, 0.8]))
    close(out, [[1.0, 0.3], [-1.0, 0.3]])
    # u_k = 0.5, click weight 4 (step 0.3): delta = 4 * 0.3 * 0.5 * 0.5 = 0.3 -> 0.8 or 0.2;
    # click weight 40: delta 3 -> clipped to 1 or -1
    for w, expected in ((4.0, [0.8, 0.2]), (40.0, [1.0, -1.0])):
        model = Interest(RecSimInterest(step=0.3, click_weight=w))
        out = show_one(model, t([[0.5, 0.0]] * 2), [1.0, 0.0], uniform=t([0.1, 0.9]))
        close(out[:, 0], expected)
    assert ((out >= -1) & (out <= 1)).all()


def test_recsim_interest_expected_change_has_the_sign_of_the_interest() -> None:
    # E[change] = p size - (1 - p) size = (2p - 1) size = u_k * size
    gen = torch.Generator().manual_seed(7)
    n = 100_000
    model = Interest(RecSimInterest(step=0.3))
    for uk in (-0.6, 0.4):
        u = t([[uk, 0.0]]).expand(n, 2)
        unif = torch.rand(n, generator=gen, dtype=F64)
        out = model.step(
            u, u, t([[[1.0, 0.0]]]).expand(n, 1, 2), torch.zeros(n, dtype=torch.long), unif
        )
        size = 0.3 * (1 - abs(uk)) * (1 - uk)
        mean_change = float((out[:, 0] - uk).mean())
        assert abs(mean_change - uk * size) < 5 * size / math.sqrt(n)
        assert math.copysign(1, mean_change) == math.copysign(1, uk)


# ---------------------------------------------------------------------------- Evans
L, C, R = t([1.0, 0.0, 0.0]), t([0.0, 1.0, 0.0]), t([0.0, 0.0, 1.0])
STRONG_RIGHT = [0.1, 0.1, 0.4]
STRONG_LEFT = [0.4, 0.1, 0.1]
CENTRIST = [0.2, 0.4, 0.2]


def test_evans_left_content_raises_theta_r_of_right_users_by_factor() -> None:
    spec = EvansPolarization()
    assert (spec.factor_low, spec.factor_high, spec.cap) == (1.01, 1.10, 0.75)
    model = Evans(spec)
    # U = 0.5: f = 1.01 + 0.09 * 0.5 = 1.055 -> theta_R = 0.4 * 1.055 = 0.422
    out = show_one(model, STRONG_RIGHT, L, uniform=0.5)
    close(out, [0.1, 0.1, 0.422])
    assert torch.equal(out[0, :2], t(STRONG_RIGHT[:2]))  # theta_L and theta_C bit for bit


def test_evans_factor_is_low_plus_range_times_uniform() -> None:
    spec = EvansPolarization(factor_low=1.02, factor_high=1.2)
    unif = t([0.0, 0.125, 0.5, 0.75, 0.999])
    u = t([[0.1, 0.25, 0.3]]).expand(5, 3)
    out = show_one(Evans(spec), u, L, uniform=unif)
    f = 1.02 + (1.2 - 1.02) * unif
    close(out[:, 2], 0.3 * f, tol=1e-15)
    # f = 1.02, 1.0425, 1.11, 1.155, 1.19982 -> theta_R = 0.3 f
    close(out[:, 2], [0.306, 0.31275, 0.333, 0.3465, 0.359946], tol=1e-7)


def test_evans_caps_at_cap() -> None:
    model = Evans(EvansPolarization())
    # theta_R = 0.72, U = 0.9: 0.72 * 1.091 = 0.78552 > 0.75 -> 0.75
    # theta_R = 0.6, U = 0.9: 0.6 * 1.091 = 0.6546 stays below the cap
    u = t([[0.1, 0.1, 0.72], [0.1, 0.1, 0.6]])
    out = show_one(model, u, L, uniform=0.9)
    close(out[:, 2], [0.75, 0.6546])
    # at the cap nothing grows any more
    out2 = show_one(model, out, L, uniform=0.9)
    close(out2[0], [0.1, 0.1, 0.75])


def test_evans_mirrored_for_left_dominant_users() -> None:
    model = Evans(EvansPolarization())
    # U = 0.25: f = 1.01 + 0.0225 = 1.0325 -> theta_L = 0.4 * 1.0325 = 0.413
    out = show_one(model, STRONG_LEFT, R, uniform=0.25)
    close(out, [0.413, 0.1, 0.1])
    assert torch.equal(out[0, 1:], t(STRONG_LEFT[1:]))


def test_evans_own_wing_and_centre_content_change_nothing() -> None:
    model = Evans(EvansPolarization())
    users = t([STRONG_RIGHT, STRONG_LEFT, [0.1, 0.25, 0.3], [0.3, 0.25, 0.1], CENTRIST])
    for item in (C, R):  # right-dominant users shown centre or right content
        assert torch.equal(show_one(model, users[[0, 2]], item, uniform=0.9), users[[0, 2]])
    for item in (C, L):  # left-dominant users shown centre or left content
        assert torch.equal(show_one(model, users[[1, 3]], item, uniform=0.9), users[[1, 3]])


def test_evans_centrists_never_change() -> None:
    model = Evans(EvansPolarization())
    gen = torch.Generator().manual_seed(8)
    u = t([CENTRIST])
    for _ in range(30):
        for item in (L, C, R):
            u_new = show_one(model, u, item, uniform=torch.rand(1, generator=gen, dtype=F64))
            assert torch.equal(u_new, u)
            u = u_new


def test_evans_weight_raises_the_factor_to_that_power_and_exposure_triggers() -> None:
    # default: every shown item acts, clicked or not
    out = show_one(Evans(EvansPolarization()), STRONG_RIGHT, L, slot=-1, uniform=0.5)
    close(out, [0.1, 0.1, 0.422])
    # clicks only: an unclicked item does nothing
    spec = EvansPolarization(exposure_weight=0.0)
    assert torch.equal(
        show_one(Evans(spec), STRONG_RIGHT, L, slot=-1, uniform=0.5), t([STRONG_RIGHT])
    )
    # click weight 2: f^2 = 1.055^2 = 1.113025 -> 0.4 * 1.113025 = 0.44521
    spec = EvansPolarization(exposure_weight=0.0, click_weight=2.0)
    close(show_one(Evans(spec), STRONG_RIGHT, L, slot=0, uniform=0.5), [0.1, 0.1, 0.44521])


# ------------------------------------------------------------------- shared weighting
def _cases():
    """(spec, u, x, uniform): a user and an item that the model would move."""
    u_sphere = [0.8, 0.6, 0.0]
    e0 = [1.0, 0.0, 0.0]
    return [
        (TRecsDrift, {"delta": 0.3}, u_sphere, e0, None),
        (BiasedAssimilation, {"eta": 0.3}, u_sphere, e0, None),
        (BoundedConfidence, {"epsilon": 0.8, "mu": 0.3}, u_sphere, e0, None),  # angle 0.64
        (RecSimInterest, {"step": 0.3}, [0.2, -0.5, 0.6], e0, 0.5),
        (EvansPolarization, {}, STRONG_RIGHT, e0, 0.5),
    ]


CASE_IDS = ["trecs", "assimilation", "confidence", "recsim", "evans"]


@pytest.mark.parametrize(("cls", "kw", "u", "x", "unif"), _cases(), ids=CASE_IDS)
def test_zero_weight_users_keep_preferences_bitwise(cls, kw, u, x, unif) -> None:
    # no click and no exposure effect: weight 0
    model = build_dynamics(cls(**kw, exposure_weight=0.0))
    assert torch.equal(show_one(model, u, x, slot=-1, uniform=unif), t([u]))
    # clicked, but click weight 0
    model = build_dynamics(cls(**kw, exposure_weight=0.0, click_weight=0.0))
    assert torch.equal(show_one(model, u, x, slot=0, uniform=unif), t([u]))
    # the same user, clicking with weight 1, does move (the case is not vacuous)
    model = build_dynamics(cls(**kw, exposure_weight=0.0))
    assert not torch.equal(show_one(model, u, x, slot=0, uniform=unif), t([u]))


@pytest.mark.parametrize(("cls", "kw", "u", "x", "unif"), _cases(), ids=CASE_IDS)
def test_exposure_weight_moves_users_by_unchosen_items(cls, kw, u, x, unif) -> None:
    # slate (x, x); user 0 clicks nothing, user 1 clicks slot 1 with click weight 0, so
    # only the unchosen items can move anybody
    uu = t([u, u])
    items = t([[x, x], [x, x]])
    slot = torch.tensor([-1, 1])
    unif_t = None if unif is None else t([unif, unif])
    moved = build_dynamics(cls(**kw, click_weight=0.0, exposure_weight=1.0)).step(
        uu, uu, items, slot, unif_t
    )
    still = build_dynamics(cls(**kw, click_weight=0.0, exposure_weight=0.0)).step(
        uu, uu, items, slot, unif_t
    )
    assert not torch.equal(moved[0], uu[0])
    assert not torch.equal(moved[1], uu[1])
    assert torch.equal(still, uu)


@pytest.mark.parametrize(("cls", "kw", "u", "x", "unif"), _cases(), ids=CASE_IDS)
def test_unchosen_item_with_exposure_weight_one_acts_like_a_click(cls, kw, u, x, unif) -> None:
    exposed = build_dynamics(cls(**kw, exposure_weight=1.0))
    clicked = build_dynamics(cls(**kw, exposure_weight=0.0))
    a = show_one(exposed, u, x, slot=-1, uniform=unif)
    b = show_one(clicked, u, x, slot=0, uniform=unif)
    assert torch.equal(a, b)
    assert not torch.equal(a, t([u]))


def test_exposure_weight_scales_the_trecs_fraction() -> None:
    # u = (1, 0), unclicked item (0, 1), delta 0.5, exposure weight 0.5 -> fraction 0.25:
    # angle to the item 3/4 * pi/2, so u is at pi/8
    model = TRecs(TRecsDrift(delta=0.5, exposure_weight=0.5))
    close(
        show_one(model, [1.0, 0.0], [0.0, 1.0], slot=-1),
        [math.cos(math.pi / 8), math.sin(math.pi / 8)],
    )
