"""Fig 4 numbers: per-head correlation of kernel weights a_i with sim_pred(x_test, x_i) (paper §5.3, Eq. 9).

sim_pred(x_test, x_i) = P(o|x_test)ᵀ P(o|x_i) comes from the store. The unit of the correlation
(config `analysis.correlation_unit`):
* `centred` (default): a_i and sim_pred are demeaned within each prompt, then one Pearson r per head over all
  (test, demonstration) pairs. Prompt-level scale (the entropy of P(o|x_test), the prompt length) cannot
  create a correlation; only which demonstrations of a prompt get more weight counts;
* `pairs` (the paper's most direct reading): one Pearson r per head over all pairs, between-prompt variance
  included;
* `per_prompt`: a Pearson r within each prompt over its demonstrations, then the plain mean over prompts
  (prompts with fewer than 3 demonstrations or a constant a_i or sim_pred are left out).

Beside r, per head:
* a **partial correlation** controlling for what is not a kernel over x: the demonstration slot (one
  indicator per slot: recency), the input length |x_i| in tokens, the shown label (one-hots of y_i), whether it
  matches the prediction (1[y_i = ŷ]: a label-anchor or answer-readout head attends by that, and similar inputs
  share labels), and the demonstration's **hubness** (`demo_hubness`: its mean sim_pred with the other prompts'
  test inputs; sim_pred is an unnormalised inner product, so a demonstration with much background mass in
  P(o|x_i) has a large sim_pred with every test input). Both a_i and sim_pred are residualised on these
  covariates (within-prompt demeaned for `centred` / `per_prompt`, with an intercept for `pairs`) and
  correlated. Hubness is the store's `demo_hubness` when it has one (written by the capture from the P(o|x)
  vectors: exact, every demonstration; `hubness_source` = `stored`). Older stores hold no P(o|x) vectors, so
  there it is estimated (`estimated`): the sim_pred of the same demonstration input relative to its prompt's
  mean sim_pred, averaged over the other prompts that show it (`store_hubness`); where no other prompt shows
  it, the mean is imputed and a missing-indicator enters the design (`hubness_coverage` = share of pairs with a
  value, `hubness_support` = mean number of other prompts behind one). The estimate is only as good as its
  support: with a demonstration pool much larger than the demonstrations drawn (the default run), most inputs
  recur in 0–2 other prompts and the estimated covariate removes little of a hub effect;
* a **permutation null**: sim_pred permuted among the demonstrations of each prompt
  (`analysis.correlation_permutations` times; the covariates stay in place, so the null also breaks any
  slot/length link of sim_pred), its central `level` interval per head, and a single-step studentised max-T
  (kicl.analysis.stats.max_t): each head's r is centred on the mean of its own null and scaled by its sd, the
  two-sided per-head p-value is (1 + #{|T*| ≥ |T|}) / (1 + B), and the family-wise p-value and threshold
  (`{r}_max_t`, in null sd units) come from max |T| over the heads of one pooling. The centring matters for
  `pairs`, whose within-prompt permutation null keeps the between-prompt covariance and is off 0;
* a **bootstrap interval over prompts** (`analysis.correlation_bootstrap` resamples; percentile, `level`).
  For `pairs` and `centred` it is exact (per-prompt moments re-summed, covariate fit redone per resample);
  for `per_prompt` the partial residuals keep their full-sample covariate fit.

Only demonstrations with a finite sim_pred and a finite kernel weight at every head enter (missing slots of
prompts with fewer demonstrations are NaN). Plot-free: the drawing is in kicl.figures.fig4_simpred_correlation.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import xarray as xr

from kicl.analysis.stats import max_t
from kicl.store.reader import label_names, prompt_batches

CORRELATION_UNITS = ("centred", "pairs", "per_prompt")
MIN_PAIRS = 3


def per_prompt_pearson(x: np.ndarray, y: np.ndarray, min_pairs: int = MIN_PAIRS) -> np.ndarray:
    """r within each prompt: x (P, *G, D), y (P, D) -> (P, *G); NaN where undefined."""
    y = np.broadcast_to(y.reshape((y.shape[0],) + (1,) * (x.ndim - 2) + (y.shape[1],)), x.shape)
    ok = np.isfinite(x) & np.isfinite(y)
    n = ok.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mx = np.where(ok, x, 0).sum(-1) / n
        my = np.where(ok, y, 0).sum(-1) / n
        dx = np.where(ok, x - mx[..., None], 0)
        dy = np.where(ok, y - my[..., None], 0)
        r = (dx * dy).sum(-1) / np.sqrt((dx * dx).sum(-1) * (dy * dy).sum(-1))
    r[n < min_pairs] = np.nan
    return r


def _demean(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """values (P, D, ...) minus their mean over the valid demonstrations of each prompt; 0 at invalid slots."""
    mask = valid.reshape(valid.shape + (1,) * (values.ndim - 2))
    n = np.maximum(valid.sum(1), 1).reshape((-1, 1) + (1,) * (values.ndim - 2))
    mean = np.where(mask, values, 0).sum(1, keepdims=True) / n
    return np.where(mask, values - mean, 0.0)


def _covariates(valid, input_len, partial: bool, intercept: bool, extra=None) -> np.ndarray:
    """Design (P, D, k) at the valid slots (0 elsewhere): [intercept] + [slot indicators 1.., input length,
    the `extra` columns (P, D, e)]."""
    n_prompts, n_demos = valid.shape
    columns = [valid.astype(float)] if intercept else []
    if partial:
        for slot in range(1, n_demos):
            columns.append(np.broadcast_to(np.arange(n_demos) == slot, valid.shape).astype(float))
        columns.append(input_len.astype(float))
        if extra is not None:
            columns.extend(np.moveaxis(np.asarray(extra, dtype=np.float64), -1, 0))
    if not columns:
        return np.zeros((n_prompts, n_demos, 0))
    return np.where(valid[..., None], np.stack(columns, -1), 0.0)


def _residual_r(xx, xy, yy, xz, yz, zz) -> np.ndarray:
    """Correlation of x and y after both are regressed on z, from cross-products (leading dims broadcast).

    xx, xy (..., G); yy (...); xz (..., G, k); yz (..., k); zz (..., k, k).
    """
    if xz.shape[-1]:
        inv = np.linalg.pinv(zz)
        xz_inv = np.einsum("...gk,...kl->...gl", xz, inv)
        rx = xx - np.einsum("...gk,...gk->...g", xz_inv, xz)
        rxy = xy - np.einsum("...gk,...k->...g", xz_inv, yz)
        ry = yy - np.einsum("...k,...kl,...l->...", yz, inv, yz)
    else:
        rx, rxy, ry = xx, xy, yy
    with np.errstate(invalid="ignore", divide="ignore"):
        r = rxy / np.sqrt(np.clip(rx, 0, None) * np.clip(ry, 0, None)[..., None])
    return np.clip(r, -1.0, 1.0)


def _within_r(x: np.ndarray, y: np.ndarray, n_valid: np.ndarray) -> np.ndarray:
    """Within-prompt r of already within-prompt-centred x (P, D, G) and y (P, D, B) -> (P, G, B)."""
    num = np.matmul(x.transpose(0, 2, 1), y)
    sx = (x * x).sum(1)[:, :, None]
    sy = (y * y).sum(1)[:, None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        r = num / np.sqrt(sx * sy)
    r[n_valid < MIN_PAIRS] = np.nan
    return np.where(np.isfinite(r), np.clip(r, -1, 1), np.nan)


def _nanmean_weighted(r: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted mean over prompts of r (P, G) with NaN left out; weights (B, P) -> (B, G)."""
    ok = np.isfinite(r)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (weights @ np.where(ok, r, 0.0)) / (weights @ ok.astype(float))


def within_prompt_permutations(valid: np.ndarray, n: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """`n` random permutations of the valid demonstrations of each prompt, as (targets (P, D), sources (n, P, D)).

    For permutation b, value[p, sources[b, p, j]] moves to slot targets[p, j]; invalid slots map to invalid
    slots, so an array that is 0 at the invalid slots stays so.
    """
    targets = np.argsort(~valid, axis=1, kind="stable")
    keys = rng.random((n,) + valid.shape)
    keys[:, ~valid] = 2.0
    return targets, np.argsort(keys, axis=-1)


def permute_within(y: np.ndarray, targets: np.ndarray, sources: np.ndarray) -> np.ndarray:
    """y (P, D) -> (n, P, D) permuted within each prompt (see within_prompt_permutations)."""
    out = np.zeros(sources.shape)
    moved = np.take_along_axis(np.broadcast_to(y, sources.shape), sources, axis=-1)
    np.put_along_axis(out, np.broadcast_to(targets, sources.shape), moved, axis=-1)
    return out


def load_pairs(ds: xr.Dataset, prompts, pools, batch_size: int = 256):
    """Kernel weights (P, D, pool, layer, head), sim_pred (P, D), input lengths (P, D) and the valid-pair mask."""
    kws, sims, lens = [], [], []
    for batch in prompt_batches(prompts, batch_size):
        kws.append(ds["kernel_weight"].isel(prompt=batch).sel(pooling=list(pools)).values.astype(np.float64))
        sims.append(ds["sim_pred"].isel(prompt=batch).values.astype(np.float64))
        lens.append(ds["input_end"].isel(prompt=batch).values - ds["input_start"].isel(prompt=batch).values)
    kw = np.moveaxis(np.concatenate(kws), -1, 1)  # (P, D, pool, layer, head)
    sim, input_len = np.concatenate(sims), np.concatenate(lens).astype(np.float64)
    valid = np.isfinite(sim) & np.isfinite(kw).all(axis=(2, 3, 4))
    return kw, sim, input_len, valid


@dataclass(frozen=True)
class CorrelationOptions:
    """How Fig 4's correlations are computed and tested: the unit (``analysis.correlation_unit``), the within-prompt
    permutations of the null, the bootstrap resamples of the intervals, the level, the seed, and how many
    permutations are computed at once (``chunk``, memory only)."""

    unit: str = "centred"
    n_permutations: int = 200
    n_boot: int = 200
    level: float = 0.95
    seed: int = 0
    chunk: int = 25

    def __post_init__(self):
        if self.unit not in CORRELATION_UNITS:
            raise ValueError(f"analysis.correlation_unit must be one of {CORRELATION_UNITS}, got {self.unit!r}")


@dataclass(frozen=True)
class _Resampling:
    """The prompt bootstrap weights (b, P) and the within-prompt permutations shared by r and the partial r."""

    boot_weights: np.ndarray
    targets: np.ndarray
    sources: np.ndarray
    n_permutations: int
    chunk: int

    def permuted(self, y: np.ndarray):
        """y (P, D) under each chunk of permutations: (b, P, D) arrays."""
        for start in range(0, self.n_permutations, self.chunk):
            yield permute_within(y, self.targets, self.sources[start : start + self.chunk])


def correlation_stats(
    x, y, input_len, valid, options: CorrelationOptions = CorrelationOptions(), *, covariates=None
) -> dict[str, np.ndarray]:
    """Every Fig 4 number for G heads at once: x (P, D, G) kernel weights, y (P, D) sim_pred, input_len (P, D).

    `covariates` (P, D, e): further partial-r covariates beside slot and length (see `partial_covariates`).
    Returns r, partial_r, their bootstrap intervals, per-head permutation intervals and p-values, and the
    family-wise max-T threshold and p-values (over all G heads: call once per pooling) — see the module docstring.
    """  # fmt: skip
    unit = options.unit
    x = np.where(valid[..., None], x, 0.0)
    y = np.where(valid, y, 0.0)
    if unit != "pairs":
        x, y = _demean(x, valid), _demean(y, valid)
    n_prompts = x.shape[0]
    rng = np.random.default_rng(options.seed)
    weights = np.full(n_prompts, 1 / n_prompts)
    boot_weights = rng.multinomial(n_prompts, weights, size=options.n_boot).astype(float)
    out = {"n_pairs": int(valid.sum()), "n_prompts": int(valid.any(1).sum())}
    targets, sources = within_prompt_permutations(valid, options.n_permutations, rng)
    resampling = _Resampling(boot_weights, targets, sources, options.n_permutations, options.chunk)
    for name, partial in (("r", False), ("partial_r", True)):
        z = _covariates(valid, input_len, partial, intercept=unit == "pairs", extra=covariates)
        if unit != "pairs":
            z = _demean(z, valid)
        if unit == "per_prompt":
            stat, boot, null = _per_prompt_r(x, y, z, valid, partial, resampling)
        else:
            stat, boot, null = _pooled_r(x, y, z, resampling)
        out[name] = stat
        out.update(_summaries(name, stat, boot, null, options.level))
    return out


def _per_prompt_r(x, y, z, valid, partial: bool, resampling: _Resampling):
    """(statistic, bootstrap, null) of the mean within-prompt r, residualised on `z` when `partial`."""
    n_prompts, n_demos, n_heads = x.shape
    if partial:  # residualise on the covariates, one fit over all prompts
        zf = z.reshape(n_prompts * n_demos, z.shape[-1])
        proj = np.linalg.pinv(zf)  # (k, P*D)
        x_use = x - (zf @ (proj @ x.reshape(-1, n_heads))).reshape(x.shape)
        y_use = y - (zf @ (proj @ y.reshape(-1))).reshape(y.shape)
    else:
        proj, zf, x_use, y_use = None, None, x, y
    r_p = _within_r(x_use, y_use[..., None], valid.sum(1))[..., 0]  # (P, G)
    stat = _nanmean_weighted(r_p, np.ones((1, n_prompts)))[0]
    boot = _nanmean_weighted(r_p, resampling.boot_weights)
    null = []
    for permuted in resampling.permuted(y):
        yp = permuted.transpose(1, 2, 0)  # (P, D, b)
        if partial:
            yp = yp - (zf @ (proj @ yp.reshape(-1, yp.shape[-1]))).reshape(yp.shape)
        rp = _within_r(x_use, yp, valid.sum(1))  # (P, G, b)
        ok = np.isfinite(rp)
        with np.errstate(invalid="ignore", divide="ignore"):
            null.append((np.where(ok, rp, 0).sum(0) / ok.sum(0)).T)
    null = np.concatenate(null) if null else np.zeros((0, n_heads))
    return stat, boot, null


def _pooled_r(x, y, z, resampling: _Resampling):
    """(statistic, bootstrap, null) of the (partial) r over all pairs, from per-prompt cross-products."""
    n_prompts, n_demos, n_heads = x.shape
    xf, zf = x.reshape(-1, n_heads), z.reshape(n_prompts * n_demos, z.shape[-1])
    # per-prompt cross-products, re-summed with bootstrap weights
    xx_p, xy_p, yy_p = (x * x).sum(1), (x * y[..., None]).sum(1), (y * y).sum(1)
    xz_p = np.einsum("pdg,pdk->pgk", x, z)
    yz_p, zz_p = np.einsum("pd,pdk->pk", y, z), np.einsum("pdk,pdl->pkl", z, z)
    stat = _residual_r(xx_p.sum(0), xy_p.sum(0), yy_p.sum(0), xz_p.sum(0), yz_p.sum(0), zz_p.sum(0))
    w = resampling.boot_weights
    boot = _residual_r(
        w @ xx_p,
        w @ xy_p,
        w @ yy_p,
        np.einsum("bp,pgk->bgk", w, xz_p),
        w @ yz_p,
        np.einsum("bp,pkl->bkl", w, zz_p),
    )
    null = []
    for permuted in resampling.permuted(y):
        yp = permuted.reshape(-1, n_prompts * n_demos)
        xy_b = yp @ xf  # (b, G)
        yz_b = yp @ zf  # (b, k)
        yy_b = (yp * yp).sum(1)
        xz, zz = xf.T @ zf, zf.T @ zf
        null.append(
            _residual_r(
                (xf * xf).sum(0),
                xy_b,
                yy_b,
                np.broadcast_to(xz, (len(yp),) + xz.shape),
                yz_b,
                np.broadcast_to(zz, (len(yp),) + zz.shape),
            )
        )
    null = np.concatenate(null) if null else np.zeros((0, n_heads))
    return stat, boot, null


def _summaries(name: str, stat: np.ndarray, boot: np.ndarray, null: np.ndarray, level: float) -> dict:
    """Bootstrap interval, per-head null interval and centre, centred per-head p-value, family-wise max-T."""
    tail = (1 - level) / 2
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN heads (constant weights) stay NaN
        out[f"{name}_low"], out[f"{name}_high"] = np.nanquantile(boot, [tail, 1 - tail], axis=0)
        out[f"{name}_null_low"], out[f"{name}_null_high"] = np.nanquantile(null, [tail, 1 - tail], axis=0)
        test = max_t(stat, null, two_sided=True)
        out[f"{name}_null_centre"] = np.where(np.isfinite(stat), test["centre"], np.nan)
        out[f"{name}_p"] = test["p"]
        out[f"{name}_p_max"] = test["p_max"]
        out[f"{name}_max_t"] = float(np.quantile(test["null_max"], level)) if len(null) else np.nan
    return out


HEAD_FIELDS = (
    "r",
    "r_low",
    "r_high",
    "r_null_low",
    "r_null_high",
    "r_null_centre",
    "r_p",
    "r_p_max",
    "partial_r",
    "partial_r_low",
    "partial_r_high",
    "partial_r_null_low",
    "partial_r_null_high",
    "partial_r_null_centre",
    "partial_r_p",
    "partial_r_p_max",
)


def demo_hubness(values: np.ndarray, keys: np.ndarray, present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each demonstration's mean of `values` (P, D) over the OTHER prompts that show the same input.

    keys (P, D) identify a demonstration input (its text or pool row); present (P, D). hubness[p, i] = mean of
    values[q, j] over the pairs of prompts q ≠ p with keys[q, j] = keys[p, i] (NaN where no other prompt shows
    that input); support[p, i] = how many such pairs.
    """
    ok = present & np.isfinite(values)
    _, inverse = np.unique(keys[ok], return_inverse=True)
    index = np.full(keys.shape, -1)
    index[ok] = inverse
    total_sum = np.bincount(inverse, weights=values[ok])
    total_n = np.bincount(inverse).astype(float)
    same = (index[:, :, None] == index[:, None, :]) & ok[:, :, None] & ok[:, None, :]
    own_sum = (same * np.where(ok, values, 0.0)[:, None, :]).sum(-1)
    own_n = same.sum(-1)
    support = np.where(ok, total_n[np.maximum(index, 0)] - own_n, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        hub = np.where(ok & (support > 0), (total_sum[np.maximum(index, 0)] - own_sum) / support, np.nan)
    return hub, support


def demo_keys(ds: xr.Dataset) -> np.ndarray:
    """What identifies a demonstration input across prompts: `demo_text` when stored, else `demo_pool_index`."""
    if "demo_text" in ds.variables:
        text = np.array(np.asarray(ds["demo_text"].values).tolist(), dtype=str)
        if (text != "").any():
            return text
    return ds["demo_pool_index"].values.astype(str)


def store_hubness(ds: xr.Dataset, sim: np.ndarray, present: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """Each demonstration's hubness (P, D) in every prompt of the store, its support and its source.

    `stored`: the capture's exact `demo_hubness` (mean P(o|x_test_q)ᵀP(o|x_i) over all other prompts q; support
    N − 1). `estimated` (stores without it): the demonstration's sim_pred relative to its prompt's mean sim_pred
    (which removes the test input's scale), averaged over the other prompts that show the same input
    (`demo_hubness`; NaN where none does). ``sim`` (P, D) is NaN at absent demonstrations."""
    if "demo_hubness" in ds.variables:
        hub = np.where(present, ds["demo_hubness"].values.astype(np.float64), np.nan)
        support = np.where(np.isfinite(hub), ds.sizes["prompt"] - 1.0, 0.0)
        return hub, support, "stored"
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        hub, support = demo_hubness(sim / np.nanmean(sim, 1, keepdims=True), demo_keys(ds), present)
    return hub, support, "estimated"


def partial_covariates(ds: xr.Dataset, prompts) -> tuple[np.ndarray, list[str], dict]:
    """The partial-r covariates beyond slot and length, (P, D, e) for the sorted `prompts`, their names and the
    hubness record (`hubness_source`, `hubness_coverage`, `hubness_support`): y_i one-hots (labels 1..K−1),
    1[y_i = ŷ], and the demonstration's hubness (`store_hubness`: stored exact, else estimated), mean-imputed with
    a missing indicator, and that hubness times the prompt's mean sim_pred (sim_pred ≈ test scale × demo
    hubness)."""
    labels = ds["demo_label"].values
    present = labels >= 0
    sim = np.where(present, ds["sim_pred"].values.astype(np.float64), np.nan)
    hub, support, source = store_hubness(ds, sim, present)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        scale = np.nanmean(sim, 1, keepdims=True)
    hub, support, labels, present = hub[prompts], support[prompts], labels[prompts], present[prompts]
    scale = np.nan_to_num(scale[prompts])
    pred = ds["prediction"].values[prompts][:, None]
    columns = {f"label_{k}": labels == k for k in range(1, len(label_names(ds)))}
    columns["label_matches_prediction"] = labels == pred
    known = np.isfinite(hub)
    info = {
        "hubness_source": source,
        "hubness_coverage": float(known.sum() / max(present.sum(), 1)),
        "hubness_support": float(support[known].mean()) if known.any() else 0.0,
    }
    if known.any():
        columns["hubness"] = np.where(known, hub, hub[known].mean())
        columns["hubness_x_prompt_sim"] = columns["hubness"] * scale
        if not known[present].all():
            columns["hubness_missing"] = ~known
    names = list(columns)
    stacked = np.stack([np.asarray(columns[n], dtype=np.float64) for n in names], -1)
    return np.where(present[..., None], stacked, 0.0), names, info


def simpred_correlation(
    ds: xr.Dataset, prompts, pools, options: CorrelationOptions = CorrelationOptions(), *, batch_size: int = 256
) -> xr.Dataset:
    """Fig 4 per (pooling, layer, head): r, partial r, intervals, permutation null; family-wise max-T per pool."""
    prompts = np.sort(np.asarray(prompts, dtype=int))
    if len(prompts) == 0:
        raise ValueError("no prompts to correlate (check analysis.figure_splits)")
    kw, sim, input_len, valid = load_pairs(ds, prompts, pools, batch_size)
    if valid.sum() < MIN_PAIRS:
        raise ValueError(
            f"only {int(valid.sum())} (test, demonstration) pairs with a finite sim_pred and kernel weight"
        )
    covariates, names, hub_info = partial_covariates(ds, prompts)
    n_layers, n_heads = ds.sizes["layer"], ds.sizes["head"]
    fields = {key: np.full((len(pools), n_layers, n_heads), np.nan) for key in HEAD_FIELDS}
    per_pool = {key: np.full(len(pools), np.nan) for key in POOL_FIELDS}
    for index in range(len(pools)):
        x = kw[:, :, index].reshape(kw.shape[0], kw.shape[1], -1)
        stats = correlation_stats(x, sim, input_len, valid, options, covariates=covariates)
        for key in HEAD_FIELDS:
            fields[key][index] = np.asarray(stats[key]).reshape(n_layers, n_heads)
        for key in per_pool:
            per_pool[key][index] = stats[key]
    dims = ("pooling", "layer", "head")
    data = {key: (dims, value) for key, value in fields.items()}
    data.update({key: (("pooling",), value) for key, value in per_pool.items()})
    coords = {"pooling": list(pools), "layer": np.arange(n_layers), "head": np.arange(n_heads)}
    attrs = {
        "unit": options.unit,
        "n_pairs": stats["n_pairs"],
        "n_prompts": stats["n_prompts"],
        "n_permutations": options.n_permutations,
        "n_boot": options.n_boot,
        "level": options.level,
        "seed": options.seed,
        "partial_covariates": ",".join(["slot", "input_length", *names]),
        **hub_info,
    }
    return xr.Dataset(data, coords=coords, attrs=attrs)


POOL_FIELDS = ("r_max_t", "partial_r_max_t")
RUN_FIELDS = (
    "unit", "n_pairs", "n_prompts", "n_permutations", "n_boot", "level", "partial_covariates", "hubness_source",
    "hubness_coverage", "hubness_support",
)  # fmt: skip


def correlation_frame(result: xr.Dataset):
    """One CSV row per (pooling, layer, head) with every number, the per-pooling max-T thresholds, whether the
    head is beyond the family-wise null (p_max ≤ 1 − level) and the run's attributes."""
    frame = result[list(HEAD_FIELDS)].to_dataframe().reset_index()
    for key in POOL_FIELDS:
        frame[key] = frame["pooling"].map(dict(zip(result["pooling"].values, result[key].values)))
    alpha = 1 - result.attrs["level"]
    frame["r_above_max_null"] = frame["r_p_max"] <= alpha + 1e-12
    frame["partial_r_above_max_null"] = frame["partial_r_p_max"] <= alpha + 1e-12
    for key in RUN_FIELDS:
        frame[key] = result.attrs[key]
    return frame
