"""Fig 4: per-head Pearson correlation between kernel weights a_i and sim_pred(x_test, x_i) (paper §5.3, Eq. 9).

sim_pred(x_test, x_i) = P(o|x_test)ᵀ P(o|x_i) comes from the store. Two poolings of the (test, demo) pairs
(config `analysis.pearson_pooling`):
* `pairs` (default, the paper's most direct reading): one correlation per head over all (test point,
  demonstration) pairs of the chosen prompts;
* `per_prompt`: a correlation within each prompt over its demonstrations, then the plain mean over prompts
  (prompts with fewer than 3 demonstrations or a constant a_i or sim_pred are left out).
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from kicl.figures.heatmaps import head_heatmaps
from kicl.store.reader import open_store, poolings, prompt_batches, split_mask

POOLING_MODES = ("pairs", "per_prompt")


class PairedMoments:
    """Running sums for Pearson's r of many x columns against one y, over batches of observations."""

    def __init__(self, shape):
        self.n = np.zeros(shape)
        self.sx = np.zeros(shape)
        self.sy = np.zeros(shape)
        self.sxx = np.zeros(shape)
        self.syy = np.zeros(shape)
        self.sxy = np.zeros(shape)

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        """x (N, *shape), y (N,); pairs with a NaN on either side are skipped."""
        y = np.broadcast_to(y.reshape((-1,) + (1,) * (x.ndim - 1)), x.shape)
        ok = np.isfinite(x) & np.isfinite(y)
        x = np.where(ok, x, 0.0)
        y = np.where(ok, y, 0.0)
        self.n += ok.sum(0)
        self.sx += x.sum(0)
        self.sy += y.sum(0)
        self.sxx += (x * x).sum(0)
        self.syy += (y * y).sum(0)
        self.sxy += (x * y).sum(0)

    def pearson(self) -> np.ndarray:
        n = np.where(self.n > 0, self.n, np.nan)
        cov = self.sxy - self.sx * self.sy / n
        var_x = self.sxx - self.sx**2 / n
        var_y = self.syy - self.sy**2 / n
        with np.errstate(invalid="ignore", divide="ignore"):
            r = cov / np.sqrt(var_x * var_y)
        return np.clip(r, -1.0, 1.0)


def per_prompt_pearson(x: np.ndarray, y: np.ndarray, min_pairs: int = 3) -> np.ndarray:
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


def simpred_correlation(ds: xr.Dataset, prompts, pools, mode: str = "pairs", batch_size: int = 256) -> xr.Dataset:
    """Pearson r between kernel weights and sim_pred per (pooling, layer, head), with the number of pairs/prompts."""
    if mode not in POOLING_MODES:
        raise ValueError(f"analysis.pearson_pooling must be one of {POOLING_MODES}, got {mode!r}")
    prompts = np.sort(np.asarray(prompts, dtype=int))
    if len(prompts) == 0:
        raise ValueError("no prompts to correlate (check analysis.figure_splits)")
    shape = (len(pools), ds.sizes["layer"], ds.sizes["head"])
    moments = PairedMoments(shape)
    r_sum, r_count = np.zeros(shape), np.zeros(shape)
    for batch in prompt_batches(prompts, batch_size):
        kw = ds["kernel_weight"].isel(prompt=batch).sel(pooling=list(pools)).values.astype(np.float64)
        sim = ds["sim_pred"].isel(prompt=batch).values.astype(np.float64)
        if mode == "pairs":
            x = np.moveaxis(kw, -1, 1).reshape((-1,) + shape)  # (P*D, pool, layer, head)
            moments.add(x, sim.reshape(-1))
        else:
            r = per_prompt_pearson(kw, sim)
            r_sum += np.nansum(r, 0)
            r_count += np.isfinite(r).sum(0)
    if mode == "pairs":
        r, n = moments.pearson(), moments.n
    else:
        with np.errstate(invalid="ignore", divide="ignore"):
            r = r_sum / r_count
        n = r_count
    dims = ("pooling", "layer", "head")
    coords = {"pooling": list(pools), "layer": np.arange(shape[1]), "head": np.arange(shape[2])}
    return xr.Dataset({"pearson_r": (dims, r), "n": (dims, n)}, coords=coords, attrs={"mode": mode})


def correlation_figure(store, png, csv, *, pools=(), splits=("select", "heldout"), mode="pairs", batch_size=256, title=""):
    """Fig 4: heat-maps of r(a_i, sim_pred) per head, one panel per pooling, plus the CSV."""
    ds = open_store(store, needs=["kernel_weight", "sim_pred", "split"])
    pools = poolings(ds, pools)
    prompts = np.flatnonzero(split_mask(ds, splits))
    result = simpred_correlation(ds, prompts, pools, mode, batch_size)
    frame = result.to_dataframe().reset_index()
    frame["n_unit"] = "pairs" if mode == "pairs" else "prompts"
    frame.to_csv(csv, index=False, float_format="%.6g")
    grids = {p: result["pearson_r"].sel(pooling=p).values for p in pools}
    finite = result["pearson_r"].values[np.isfinite(result["pearson_r"].values)]
    bound = float(np.abs(finite).max()) if finite.size else 1.0
    how = "over all (test, demo) pairs" if mode == "pairs" else "within each prompt, averaged over prompts"
    head_heatmaps(
        grids,
        png,
        f"{title}\nPearson r(kernel weight, sim_pred) {how}, {len(prompts)} prompts ({'+'.join(splits)})",
        "Pearson r",
        vmin=-bound,
        vmax=bound,
        cmap="RdBu_r",
    )
    return result
