"""kicl.analysis.stats: exact values, and the size of each p-value under its null by simulation."""

import numpy as np
import pytest

from kicl.analysis import stats


def test_mcnemar_is_exact_where_the_bootstrap_is_not():
    a = np.r_[np.ones(5, bool), np.zeros(95, bool)]
    b = np.zeros(100, bool)
    assert stats.mcnemar_p(a, b) == pytest.approx(0.0625)  # 5 vs 0 discordant: 2 / 2**5
    assert stats.mcnemar_p(b, b) == 1.0


def test_proportion_intervals_are_not_degenerate_at_zero():
    low, high = stats.clopper_pearson(0, 300)
    assert low == 0.0 and high == pytest.approx(0.01222, abs=1e-4)
    w_low, w_high = stats.wilson_interval(0, 300)
    assert w_low == pytest.approx(0.0, abs=1e-12) and 0.005 < w_high < 0.02
    assert stats.wilson_interval(30, 100)[0] < 0.3 < stats.wilson_interval(30, 100)[1]


def test_holm_matches_the_step_down_by_hand():
    adjusted = stats.holm([0.01, 0.04, 0.03, np.nan])
    np.testing.assert_allclose(adjusted[:3], [0.03, 0.06, 0.06])
    assert np.isnan(adjusted[3])


def test_power_round_trip_and_the_audit_table():
    assert stats.mdd(0.1, 100) == pytest.approx(0.0885, abs=0.002)
    n = stats.prompts_needed(0.2, 0.05)
    assert stats.mdd(0.2, int(n)) <= 0.05 < stats.mdd(0.2, int(n) - 20)
    assert stats.prompts_needed(0.2, 0.0) == np.inf


def test_equivalence_reads_the_interval():
    assert stats.equivalence(-0.02, 0.025, 0.03)
    assert not stats.equivalence(-0.04, 0.01, 0.03)


def test_rank_p_counts_the_observation():
    assert stats.rank_p(-1.0, np.zeros(19)) == pytest.approx(1 / 20)
    assert stats.rank_p(0.0, np.zeros(19)) == 1.0
    assert stats.rank_p(1.0, np.zeros(19), "greater") == pytest.approx(1 / 20)


@pytest.mark.parametrize("discordance", [0.05, 0.3])
def test_paired_tests_hold_their_size_under_the_null(discordance):
    """≥ 200 replications of two exchangeable predictors: rejection at α = 0.05 within [0.03, 0.07] for the
    sign-flip test on symmetric differences; McNemar is exact, hence conservative with few discordant pairs
    (at most 0.07)."""
    rng = np.random.default_rng(1)
    reps, n = 1000, 300
    mc, sf = [], []
    for _ in range(reps):
        disagree = rng.random(n) < discordance
        both = rng.random(n) < 0.7
        first = rng.random(n) < 0.5  # on a discordant prompt, either predictor is the right one
        a = np.where(disagree, first, both)
        b = np.where(disagree, ~first, both)
        mc.append(stats.mcnemar_p(a, b) < 0.05)
        diffs = rng.standard_t(3, n) + 0.5 * (a.astype(float) - b)  # heavy-tailed, symmetric about 0
        sf.append(stats.sign_flip_p(diffs, n_perm=499, seed=int(rng.integers(1 << 30))) < 0.05)
    assert 0.03 <= np.mean(sf) <= 0.07
    assert np.mean(mc) <= 0.07
    if discordance >= 0.3:  # 90 discordant pairs: the exact test is close to, never above, its nominal size
        assert np.mean(mc) >= 0.025


def test_bootstrap_mean_interval_covers_and_shrinks():
    values = np.random.default_rng(0).normal(1.0, 1.0, 400)
    mean, low, high = stats.bootstrap_mean(values, n_boot=500, seed=0, level=0.95)
    assert low < 1.0 < high and high - low < 0.3
    assert stats.bootstrap_p(np.r_[np.ones(99), -np.ones(1)]) == pytest.approx(4 / 101)


def test_bias_corrected_interval_moves_with_the_resamples_offset():
    rng = np.random.default_rng(0)
    samples = rng.normal(0.05, 0.02, 2000)  # resamples sit 0.03 above the point estimate 0.02
    low, high = stats.bias_corrected_interval(samples, 0.02, 0.9)
    plain_low, plain_high = stats.percentile_interval(samples, 0.9)
    assert low < plain_low - 0.02 and high < plain_high - 0.02
    centred_low, centred_high = stats.bias_corrected_interval(samples, float(np.median(samples)), 0.9)
    assert centred_low == pytest.approx(plain_low, abs=0.002) and centred_high == pytest.approx(plain_high, abs=0.002)


def test_bias_corrected_p_agrees_with_the_interval():
    rng = np.random.default_rng(1)
    samples = rng.normal(0.05, 0.02, 4000)
    for point in (0.02, 0.035, 0.05):  # p from about 0.9 down to 0.01: inside what 4000 resamples resolve
        p = stats.bias_corrected_p(samples, point)
        assert p > 0.005
        low, high = stats.bias_corrected_interval(samples, point, 1 - p)
        assert min(abs(low), abs(high)) == pytest.approx(0.0, abs=0.002)  # the interval at level 1 - p touches 0
