"""Replicate-level statistics: hand-computed values and calibration under a null."""

from __future__ import annotations

import math

import numpy as np
import pytest

from auditor import stats


def test_expanded_quantile_tends_to_the_nominal_tail_and_widens_for_few_replicates():
    assert stats.expanded_quantile(0.025, 10**7) == pytest.approx(0.025, rel=1e-3)
    # with 8 replicates: Phi(-sqrt(8/7) t_{7, 0.975}) = Phi(-2.529) = 0.0057
    assert stats.expanded_quantile(0.025, 8) == pytest.approx(0.00572, abs=5e-5)
    assert stats.expanded_quantile(0.025, 3) < stats.expanded_quantile(0.025, 8)


def test_constant_differences_give_a_degenerate_interval_at_that_value():
    rng = np.random.default_rng(0)
    assert stats.bounds(np.zeros(8), 0.025, 1000, rng) == (0.0, 0.0)
    assert stats.bounds(np.full(5, 0.3), 0.025, 1000, rng) == (0.3, 0.3)
    e = stats.paired_effect(np.zeros(8), 0.05, 1000, rng)
    assert (e.mean, e.ci_low, e.ci_high, e.sd, e.p_value) == (0.0, 0.0, 0.0, 0.0, 1.0)
    assert math.isnan(e.effect_size)


def test_sign_flip_p_values_by_hand():
    rng = np.random.default_rng(0)
    # all 3 positive: only the identity and the all-flipped signs reach |mean| -> 2/8
    assert stats.sign_flip_p(np.array([1.0, 1.0, 1.0]), rng) == 0.25
    # [2, -1, 1], sum 2: the 8 signed sums are +-2, +-4, +-2, +-0; six reach |2| -> 6/8
    assert stats.sign_flip_p(np.array([2.0, -1.0, 1.0]), rng) == 0.75


def test_holm_adjustment_by_hand():
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    out = stats.holm([0.2, math.nan, 0.01])
    assert out[0] == pytest.approx(0.2) and math.isnan(out[1]) and out[2] == pytest.approx(0.02)


def test_decide():
    assert stats.decide(-0.1, 0.05, 0.1) == "pass"
    assert stats.decide(0.11, 0.3, 0.1) == "flag"
    assert stats.decide(0.05, 0.2, 0.1) == "inconclusive"
    assert stats.decide(math.nan, 0.0, 0.1) == "inconclusive"


def flag_rate(n, tail, trials, expanded=True, seed=0):
    """Share of null data sets (true effect 0, margin 0) whose lower bound exceeds 0."""
    rng = np.random.default_rng(seed)
    flags = 0
    for _ in range(trials):
        d = rng.normal(size=n)
        if expanded:
            lower, _ = stats.bounds(d, tail, 2000, rng)
        else:
            means = stats.bootstrap_means(d, 2000, rng)
            lower = float(np.quantile(means, tail))
        flags += lower > 0.0
    return flags / trials


@pytest.mark.parametrize("n", [5, 8, 20])
def test_a_null_difference_flags_at_most_alpha_of_the_time(n):
    tail, trials = 0.05, 1500
    rate = flag_rate(n, tail, trials)
    se = math.sqrt(tail * (1 - tail) / trials)
    assert rate <= tail + 2 * se, rate


def test_the_plain_percentile_bootstrap_would_over_flag_with_8_replicates():
    """Why the interval is expanded: the plain one flags a null well above alpha."""
    assert flag_rate(8, 0.05, 1500, expanded=False) > 0.07


def test_bands_are_pointwise_and_exact_for_constant_rows():
    rng = np.random.default_rng(1)
    x = np.vstack([np.zeros(6), np.arange(6.0)])
    lo, hi = stats.band(x, 0.05, 1000, rng)
    assert (lo[0], hi[0]) == (0.0, 0.0)
    assert lo[1] < 2.5 < hi[1]
