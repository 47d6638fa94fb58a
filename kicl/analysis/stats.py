"""Resampling, intervals, p-values and power: the one home of kicl's inferential statistics.

Which test for which number (docs/decision-rule.md says why):

* a paired difference of two fixed 0/1 predictors on the same prompts (nothing re-selected): the exact McNemar
  test (`mcnemar_p`), or a sign-flip permutation for real-valued paired differences (`sign_flip_p`);
* an effect against exchangeable random draws (random head sets): the Monte-Carlo rank p-value (`rank_p`)
  and the two-level bootstrap, draws then prompts (`two_level_bootstrap`);
* a number whose computation re-selects something (a head, a fitted baseline): the percentile bootstrap with
  the selection repeated in every resample (`bootstrap_counts`, `percentile_interval`, `bootstrap_p`), bias-corrected
  where refits on resamples are weaker than on all prompts (`bias_corrected_interval`);
* a proportion: the Wilson interval (`wilson_interval`), or Clopper–Pearson where exact coverage is wanted;
* several intervals read against one reference: Holm-adjusted p-values (`holm`);
* many heads against one permutation null: single-step studentised max-T (`max_t`), each head centred and
  scaled by its own null, so that an off-centre or wider null of one head neither hides nor fakes another's;
* equivalence within ±margin: two one-sided tests, read off the 1 − 2α interval (`equivalence`);
* power: the minimum detectable paired difference and the prompts a pilot's discordance needs (`mdd`,
  `prompts_needed`).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as _scipy


def bootstrap_counts(rng: np.random.Generator, n: int, n_boot: int) -> np.ndarray:
    """(n_boot, n) multiplicities of n items in n_boot resamples drawn with replacement."""
    idx = rng.integers(0, n, (n_boot, n))
    counts = np.zeros((n_boot, n))
    np.add.at(counts, (np.repeat(np.arange(n_boot), n), idx.ravel()), 1.0)
    return counts


def percentile_interval(samples, level: float, axis: int = 0) -> tuple:
    """The central `level` percentile interval of bootstrap `samples` along `axis` -> (low, high)."""
    tail = (1 - level) / 2
    low, high = np.quantile(np.asarray(samples, dtype=np.float64), [tail, 1 - tail], axis=axis)
    return (float(low), float(high)) if np.ndim(low) == 0 else (low, high)


def _bias_z0(samples: np.ndarray, point: float) -> float:
    """z0 = Φ⁻¹(share of resamples below the point estimate, ties counted half), kept off the extremes."""
    below = ((samples < point).sum() + 0.5 * (samples == point).sum()) / len(samples)
    return float(_scipy.norm.ppf(np.clip(below, 1 / len(samples), 1 - 1 / len(samples))))


def bias_corrected_interval(samples, point: float, level: float) -> tuple[float, float]:
    """Efron's bias-corrected (BC) percentile interval: the percentile interval of bootstrap `samples` with its
    quantiles moved by how far the resamples sit off the point estimate (z0 = Φ⁻¹(share of resamples below it)).
    Needed where refits on resamples (which hold ~63% distinct prompts) are weaker than the fit on all prompts."""
    samples = np.asarray(samples, dtype=np.float64)
    z0 = _bias_z0(samples, point)
    z = _scipy.norm.ppf((1 - level) / 2)
    quantiles = _scipy.norm.cdf([2 * z0 + z, 2 * z0 - z])
    low, high = np.quantile(samples, quantiles)
    return float(low), float(high)


def bias_corrected_p(samples, point: float) -> float:
    """Two-sided p-value of 0 matching `bias_corrected_interval`: 2·min(a, 1 − a), where a is the BC level whose
    lower bound reaches 0 (the interval at level 1 − p just touches 0)."""
    samples = np.asarray(samples, dtype=np.float64)
    n = len(samples)
    z0 = _bias_z0(samples, point)
    at_zero = np.clip(((samples < 0).sum() + 0.5 * (samples == 0).sum()) / n, 1 / (n + 1), n / (n + 1))
    side = _scipy.norm.cdf(_scipy.norm.ppf(at_zero) - 2 * z0)
    return float(min(1.0, 2 * min(side, 1 - side)))


def bootstrap_mean(values, *, n_boot: int, seed: int, level: float, axis: int = 0) -> tuple:
    """Mean of `values` along `axis` with its percentile-bootstrap interval over that axis -> (mean, low, high)."""
    values = np.moveaxis(np.asarray(values, dtype=np.float64), axis, 0)
    if len(values) == 0:
        raise ValueError("no values to average")
    counts = bootstrap_counts(np.random.default_rng(seed), len(values), n_boot)
    means = np.tensordot(counts, values, axes=1) / len(values)
    low, high = percentile_interval(means, level)
    mean = values.mean(0)
    return (float(mean), low, high) if np.ndim(mean) == 0 else (mean, low, high)


def two_level_bootstrap(per_draw, n_boot: int = 1000, seed: int = 0, paired=None) -> tuple:
    """Resampled means of `per_draw` (R draws x n prompts): the draws resampled with replacement, then the
    prompts (one prompt resample shared by every draw, so the spread of both levels counts). With `paired`
    (n values on the same prompts, e.g. the top-k set's per-prompt effects) its mean over the same prompt
    resamples comes too. Returns ((B,) draw-mean resamples, (B,) paired resamples or None)."""
    per_draw = np.asarray(per_draw, dtype=np.float64)
    if per_draw.ndim != 2 or 0 in per_draw.shape:
        raise ValueError(f"per_draw must be a non-empty (draws, prompts) array, got shape {per_draw.shape}")
    n_draws, n = per_draw.shape
    rng = np.random.default_rng(seed)
    draw_counts = bootstrap_counts(rng, n_draws, n_boot)
    prompt_counts = bootstrap_counts(rng, n, n_boot)
    means = np.einsum("br,rj,bj->b", draw_counts, per_draw, prompt_counts) / (n_draws * n)
    if paired is None:
        return means, None
    paired = np.asarray(paired, dtype=np.float64)
    if paired.shape != (n,):
        raise ValueError(f"paired must hold one value per prompt ({n}), got shape {paired.shape}")
    return means, prompt_counts @ paired / n


def bootstrap_p(diffs) -> float:
    """Two-sided bootstrap p-value of a difference being 0: min(1, 2·min(#{Δ* ≤ 0}+1, #{Δ* ≥ 0}+1)/(B+1))."""
    diffs = np.asarray(diffs)
    return float(min(1.0, 2 * min((diffs <= 0).sum() + 1, (diffs >= 0).sum() + 1) / (len(diffs) + 1)))


def mcnemar_p(a, b) -> float:
    """Exact two-sided McNemar p-value for paired 0/1 outcomes `a`, `b` (binomial test on the discordant pairs)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"paired outcomes must have one shape, got {a.shape} and {b.shape}")
    n01, n10 = int((~a & b).sum()), int((a & ~b).sum())
    if n01 + n10 == 0:
        return 1.0
    return float(_scipy.binomtest(n10, n01 + n10, 0.5).pvalue)


def sign_flip_p(diffs, n_perm: int = 10000, seed: int = 0) -> float:
    """Two-sided sign-flip permutation p-value of mean(`diffs`) = 0 for paired differences, (1 + #)/(1 + n_perm)."""
    diffs = np.asarray(diffs, dtype=np.float64)
    observed = abs(diffs.mean())
    signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=(n_perm, len(diffs)))
    null = np.abs(signs @ diffs) / len(diffs)
    return float((1 + (null >= observed - 1e-12).sum()) / (1 + n_perm))


def rank_p(observed: float, draws, alternative: str = "less") -> float:
    """Monte-Carlo rank p-value of `observed` among exchangeable `draws`: (1 + #{draw ≤ obs})/(1 + R) for
    'less' (observed unusually small), (1 + #{draw ≥ obs})/(1 + R) for 'greater'."""
    draws = np.asarray(draws, dtype=np.float64)
    if alternative not in ("less", "greater"):
        raise ValueError(f"alternative must be 'less' or 'greater', got {alternative!r}")
    hits = (draws <= observed) if alternative == "less" else (draws >= observed)
    return float((1 + hits.sum()) / (1 + len(draws)))


def wilson_interval(k, n, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of the proportion k/n; (nan, nan) for n = 0."""
    if n == 0:
        return (math.nan, math.nan)
    z = _scipy.norm.ppf(1 - (1 - level) / 2)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (0.0 if k == 0 else max(0.0, centre - half), 1.0 if k == n else min(1.0, centre + half))


def clopper_pearson(k, n, level: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper–Pearson) interval of the proportion k/n; (nan, nan) for n = 0."""
    if n == 0:
        return (math.nan, math.nan)
    tail = (1 - level) / 2
    low = 0.0 if k == 0 else float(_scipy.beta.ppf(tail, k, n - k + 1))
    high = 1.0 if k == n else float(_scipy.beta.ppf(1 - tail, k + 1, n - k))
    return (low, high)


def holm(p_values) -> np.ndarray:
    """Holm step-down adjusted p-values (family-wise error), same order as given; NaN stays NaN."""
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    m = len(order)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def max_t(observed, null, two_sided: bool = False) -> dict:
    """Single-step studentised max-T over G items: observed (G,), permutation draws null (B, G).

    Each item is centred and scaled by the mean and sd of its B + 1 values (the observed one included, which
    keeps the B + 1 rows exchangeable under H0, so the p-values are exact); T = (value − centre) / scale, |T|
    when `two_sided`. Returns `centre`, `scale`, `t` (G,), `null_max` (B,) = max over items of each draw's T,
    `p` (G,) = (1 + #{T*_bg ≥ T_g}) / (1 + B) per item, and `p_max` (G,) = (1 + #{max_g' T*_bg' ≥ T_g}) / (1 + B),
    the family-wise adjusted p-value. Items with a NaN observed value get NaN; a constant item has T = 0.
    """
    observed = np.asarray(observed, dtype=np.float64)
    null = np.asarray(null, dtype=np.float64).reshape(-1, observed.size)
    values = np.vstack([observed[None], null])
    with np.errstate(invalid="ignore", divide="ignore"):
        centre = np.nanmean(values, 0) if len(values) else np.full(observed.shape, np.nan)
        scale = np.nanstd(values, 0, ddof=1) if len(values) > 1 else np.full(observed.shape, np.nan)
        t_all = (values - centre) / scale
    t_all = np.where(scale > 0, t_all, 0.0)
    t_all = np.abs(t_all) if two_sided else t_all
    t_all = np.where(np.isfinite(values), t_all, -np.inf)
    t, t_null = t_all[0], t_all[1:]
    null_max = t_null.max(1) if observed.size else np.zeros(len(t_null))
    n = len(t_null)
    p = (1 + (t_null >= t - 1e-12).sum(0)) / (1 + n)
    p_max = (1 + (null_max[:, None] >= t - 1e-12).sum(0)) / (1 + n)
    defined = np.isfinite(observed)
    return {
        "centre": centre,
        "scale": scale,
        "t": np.where(defined, t, np.nan),
        "null_max": null_max,
        "p": np.where(defined, p, np.nan),
        "p_max": np.where(defined, p_max, np.nan),
    }


def equivalence(low: float, high: float, margin: float) -> bool:
    """Two one-sided tests at α, read off the 1 − 2α interval [low, high]: equivalent within ±margin."""
    return bool(-margin < low and high < margin)


def _z(alpha: float, power: float) -> float:
    return float(_scipy.norm.ppf(1 - alpha / 2) + _scipy.norm.ppf(power))


def mdd(discordance: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Minimum detectable paired difference of two 0/1 predictors on n prompts (normal approximation to
    McNemar): the true difference a two-sided test at `alpha` detects with probability `power`, given the share
    of prompts on which the two disagree (`discordance`)."""
    if n <= 0:
        return math.inf
    return _z(alpha, power) * math.sqrt(max(discordance, 1.0 / n) / n)


def prompts_needed(discordance: float, difference: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Prompts at which a paired difference `difference` becomes detectable (inverse of `mdd`); inf for 0.

    From a pilot run: its discordance (share of prompts where the head and the competitor disagree in being
    right) and the difference that matters (an observed Δ, or the distance of Δ to an equivalence margin).
    """
    if difference == 0 or not math.isfinite(difference):
        return math.inf
    return float(math.ceil(_z(alpha, power) ** 2 * max(discordance, 1e-9) / difference**2))
