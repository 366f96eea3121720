"""Hand-computed checks of the polarization indices and axes in ``simulator.metrics``."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from simulator.metrics import (
    bimodality_coefficient,
    esteban_ray,
    extreme_share,
    mean_pairwise_distance,
    polarity,
    principal_axis,
    variance_index,
)

F64 = torch.float64


def t(x) -> torch.Tensor:
    return torch.tensor(x, dtype=F64)


# ------------------------------------------------------------------------ point mass
@pytest.mark.parametrize("value", [0.0, 0.5, -0.75])
@pytest.mark.parametrize("n", [4, 50])
def test_every_index_is_zero_for_a_point_mass(value: float, n: int) -> None:
    # dyadic values: the mean is exact, so every index must be exactly 0
    z = torch.full((n,), value, dtype=F64)
    assert variance_index(z) == 0.0
    assert bimodality_coefficient(z) == 0.0  # zero variance: 0 by convention
    for alpha in (0.5, 1.0, 1.6):
        assert esteban_ray(z, alpha=alpha) == 0.0
    assert esteban_ray(z, bins=2) == 0.0
    assert mean_pairwise_distance(z) == 0.0
    # extremity share is 0 for a point mass inside the threshold
    assert extreme_share(z, threshold=0.99) == 0.0


# values whose float64 mean is not exact when summed n times (n = 7, 50, 1000)
INEXACT_POINT_MASSES = [(v, n) for v in (0.1, 0.3, 0.7, -0.95, 1 / 3) for n in (7, 50, 1000)]


@pytest.mark.parametrize(("value", "n"), INEXACT_POINT_MASSES)
def test_indices_are_numerically_zero_for_any_point_mass(value: float, n: int) -> None:
    z = torch.full((n,), value, dtype=F64)
    assert variance_index(z) == pytest.approx(0.0, abs=1e-24)
    assert esteban_ray(z) == 0.0
    assert mean_pairwise_distance(z) == pytest.approx(0.0, abs=1e-12)


def test_bimodality_is_zero_for_a_point_mass_at_any_value() -> None:
    bad = {}
    for value, n in INEXACT_POINT_MASSES:
        bc = bimodality_coefficient(torch.full((n,), value, dtype=F64))
        if bc != 0.0:
            bad[(value, n)] = bc
    assert bad == {}


def test_mean_pairwise_distance_is_exactly_zero_for_a_point_mass() -> None:
    values = [
        mean_pairwise_distance(torch.full((n,), v, dtype=F64)) for v, n in INEXACT_POINT_MASSES
    ]
    assert min(values) >= 0.0
    assert values == [0.0] * len(values)


def test_point_mass_in_float32() -> None:
    z = torch.full((10,), 0.1)  # 0.1 is not exact in float32
    assert variance_index(z) == pytest.approx(0.0, abs=1e-24)
    assert mean_pairwise_distance(z) == pytest.approx(0.0, abs=1e-12)


# -------------------------------------------------------------------------- variance
def test_variance_index_hand_value_is_the_mean_not_the_sum() -> None:
    # z = 1, 2, 3, 4: mean 2.5, squared deviations 2.25, 0.25, 0.25, 2.25 -> sum 5, mean 1.25
    assert variance_index(t([1.0, 2.0, 3.0, 4.0])) == pytest.approx(1.25, abs=1e-15)
    # two poles at -1 and +1: every squared deviation is 1
    assert variance_index(t([-1.0, 1.0] * 7)) == pytest.approx(1.0, abs=1e-15)
    # (Musco et al.'s sum would be n times larger; it is the mean so sizes compare)
    assert variance_index(t([1.0, 2.0, 3.0, 4.0] * 10)) == pytest.approx(1.25, abs=1e-15)


# ---------------------------------------------------------------------- bimodality
def test_bimodality_large_normal_sample_is_about_one_third() -> None:
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(200_000, generator=gen, dtype=F64)
    assert bimodality_coefficient(z) == pytest.approx(1 / 3, abs=0.01)


def test_bimodality_large_uniform_sample_is_about_five_ninths() -> None:
    # uniform: skewness 0, excess kurtosis -6/5 -> 1 / (3 - 6/5) = 5/9
    gen = torch.Generator().manual_seed(1)
    z = torch.rand(200_000, generator=gen, dtype=F64) * 2 - 1
    assert bimodality_coefficient(z) == pytest.approx(5 / 9, abs=0.01)


@pytest.mark.parametrize("n", [4, 6, 10, 100, 10_000])
def test_bimodality_two_equal_point_masses(n: int) -> None:
    # n/2 values at -1 and n/2 at +1: g = 0, population excess kurtosis -2.
    # Sample kurtosis ((n + 1)(-2) + 6)(n - 1) / ((n - 2)(n - 3)) = -2 (n - 1) / (n - 3);
    # denominator -2 (n - 1)/(n - 3) + 3 (n - 1)^2 / ((n - 2)(n - 3)) = (n - 1)(n + 1) / ((n - 2)(n - 3))
    # so BC = (n - 2)(n - 3) / ((n - 1)(n + 1)): 2/15 for n = 4, -> 1 as n grows.
    z = t([-1.0, 1.0] * (n // 2))
    expected = (n - 2) * (n - 3) / ((n - 1) * (n + 1))
    assert bimodality_coefficient(z) == pytest.approx(expected, rel=1e-12)
    # the location and scale of the two masses do not matter
    assert bimodality_coefficient(3.0 + 0.2 * z) == pytest.approx(expected, rel=1e-9)


def test_bimodality_two_point_masses_tends_to_one() -> None:
    assert bimodality_coefficient(t([-1.0, 1.0] * 5000)) == pytest.approx(1.0, abs=1e-3)
    assert bimodality_coefficient(t([-1.0, 1.0] * 5000)) > 5 / 9


def test_bimodality_skewed_hand_value() -> None:
    # z = 0, 0, 0, 1: mean 1/4; central moments m2 = 3/16, m3 = 3/32, m4 = 21/256
    # g1 = m3 / m2^1.5 = 2 / sqrt 3, g2 = m4 / m2^2 - 3 = -2/3
    # G1 = g1 sqrt(4 * 3) / 2 = 2; G2 = ((5)(-2/3) + 6) * 3 / (2 * 1) = 4
    # BC = (2^2 + 1) / (4 + 3 * 9 / 2) = 5 / 17.5 = 2/7
    assert bimodality_coefficient(t([0.0, 0.0, 0.0, 1.0])) == pytest.approx(2 / 7, rel=1e-12)


def test_bimodality_needs_four_values() -> None:
    with pytest.raises(ValueError):
        bimodality_coefficient(t([0.0, 1.0, 2.0]))


# ---------------------------------------------------------------------- Esteban-Ray
def test_esteban_ray_two_bin_hand_example() -> None:
    # bins = 2 on [-1, 1]: centres -0.5 and 0.5, |y_1 - y_2| = 1.
    # 3 values in the left bin, 1 in the right: pi = (0.75, 0.25)
    # ER = pi_1^(1+a) pi_2 + pi_2^(1+a) pi_1
    z = t([-0.75, -0.2, -0.9, 0.6])
    # alpha = 1: 0.75^2 * 0.25 + 0.25^2 * 0.75 = 0.140625 + 0.046875 = 0.1875
    assert esteban_ray(z, alpha=1.0, bins=2) == pytest.approx(0.1875, rel=1e-12)
    # alpha = 1.6
    expected = 0.75**2.6 * 0.25 + 0.25**2.6 * 0.75
    assert esteban_ray(z, alpha=1.6, bins=2) == pytest.approx(expected, rel=1e-12)
    # K scales linearly
    assert esteban_ray(z, alpha=1.0, bins=2, k=2.0) == pytest.approx(0.375, rel=1e-12)


def test_esteban_ray_equal_halves_and_clipping() -> None:
    # values outside [lo, hi] fall in the end bins: same as (-0.5, 0.5) halves
    # pi = (1/2, 1/2), alpha = 1: 2 * (1/2)^2 * (1/2) * 1 = 0.25
    assert esteban_ray(t([-5.0, 5.0, -1.0, 1.0]), alpha=1.0, bins=2) == pytest.approx(
        0.25, rel=1e-12
    )


def test_esteban_ray_default_bins_use_the_bin_centres() -> None:
    # 20 bins of width 0.1 on [-1, 1]: -0.75 is in bin 2 (centre -0.75), 0.75 in bin 17
    # (centre 0.75), distance 1.5. pi = (1/2, 1/2), alpha = 1.6:
    # ER = 2 * (1/2)^2.6 * (1/2) * 1.5 = 1.5 * 0.5^2.6
    assert esteban_ray(t([-0.75, 0.75])) == pytest.approx(1.5 * 0.5**2.6, rel=1e-12)


def test_esteban_ray_refuses_alpha_outside_range() -> None:
    for alpha in (0.0, -0.5, 1.7):
        with pytest.raises(ValueError):
            esteban_ray(t([0.0, 1.0]), alpha=alpha)


# --------------------------------------------------------------- pairwise distance
def test_mean_pairwise_distance_hand_value() -> None:
    # z = 0, 1, 3: unordered pairs 1, 3, 2 -> ordered sum 12 over 3 * 2 pairs = 2
    assert mean_pairwise_distance(t([3.0, 0.0, 1.0])) == pytest.approx(2.0, abs=1e-15)
    assert mean_pairwise_distance(t([1.0])) == 0.0


@pytest.mark.parametrize("n", [2, 3, 17, 200])
def test_mean_pairwise_distance_matches_brute_force(n: int) -> None:
    gen = torch.Generator().manual_seed(n)
    z = torch.randn(n, generator=gen, dtype=F64)
    z[: n // 3] = z[0]  # some ties
    brute = sum(abs(float(z[i] - z[j])) for i, j in itertools.permutations(range(n), 2))
    assert mean_pairwise_distance(z) == pytest.approx(brute / (n * (n - 1)), rel=1e-10)


def test_extreme_share() -> None:
    # |z| > 0.8: -0.9 and 0.85 yes, 0.8 not (strict), 0.5 no -> 2 / 4
    assert extreme_share(t([-0.9, 0.5, 0.85, 0.8])) == 0.5
    assert extreme_share(t([-0.9, 0.5, 0.85, 0.8]), threshold=0.5) == 0.75


# ---------------------------------------------------------------------- axes
def test_polarity_projects_on_the_normalized_axis() -> None:
    # u = (3, 4) on axis (0, 2) -> 4; on axis (1, 1) -> 7 / sqrt 2
    u = t([[3.0, 4.0], [-1.0, 0.5]])
    torch.testing.assert_close(polarity(u, t([0.0, 2.0])), t([4.0, 0.5]))
    torch.testing.assert_close(polarity(u, t([1.0, 1.0])), t([7.0, -0.5]) / math.sqrt(2))


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_principal_axis_recovers_a_known_direction_with_sign_convention(sign: float) -> None:
    # points spread along (0.36, -0.48, 0.8) (unit), with smaller orthogonal noise;
    # the largest-magnitude component (0.8) must come out positive whatever the data's sign
    direction = t([0.36, -0.48, 0.8])
    gen = torch.Generator().manual_seed(2)
    n = 500
    s = torch.randn(n, 1, generator=gen, dtype=F64) * 3.0
    noise = 0.05 * torch.randn(n, 3, generator=gen, dtype=F64)
    u = 1.5 + sign * s * direction + noise
    axis = principal_axis(u)
    assert axis.dtype == F64
    assert float(axis.norm()) == pytest.approx(1.0, abs=1e-12)
    torch.testing.assert_close(axis, direction, rtol=0, atol=5e-3)


def test_principal_axis_sign_flips_to_positive_largest_component() -> None:
    # exact data on the line t * (0.6, -0.8): largest-magnitude component -0.8 is made
    # positive, so the axis is (-0.6, 0.8)
    tt = t([-2.0, -1.0, 0.0, 1.0, 2.0])[:, None]
    axis = principal_axis(tt * t([0.6, -0.8]))
    torch.testing.assert_close(axis, t([-0.6, 0.8]), rtol=0, atol=1e-12)
    # float32 input gives a float32 axis
    axis32 = principal_axis((tt * t([0.8, 0.6])).float())
    assert axis32.dtype == torch.float32
    torch.testing.assert_close(axis32, torch.tensor([0.8, 0.6]), rtol=0, atol=1e-6)


def test_principal_axis_of_a_point_mass_is_the_first_basis_vector() -> None:
    u = t([[0.3, -0.2, 0.9]] * 5)
    assert torch.equal(principal_axis(u), t([1.0, 0.0, 0.0]))
