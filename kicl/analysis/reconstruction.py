"""Fig 3: reading each head's attention as kernel weights, ỹ = argmax_y Σ_i a_i · 1[y_i = y] (paper §5.2).

a_i is the stored kernel weight of demonstration i (pooling `max` = the paper's maximum over the input
through the label token; `mean`, `sum`, `label` = variants). Missing demonstrations (label −1, NaN weight)
add nothing. Exact ties, including all-zero votes, go to the lowest label id.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from kicl.figures.heatmaps import head_heatmaps
from kicl.store.reader import label_names, open_store, poolings, prompt_batches, split_mask


def label_votes(kernel_weight: np.ndarray, demo_label: np.ndarray, n_labels: int) -> np.ndarray:
    """Votes (P, ..., K) = Σ_d kernel_weight[p, ..., d] · 1[demo_label[p, d] = k]."""
    weights = np.nan_to_num(np.asarray(kernel_weight, dtype=np.float64), nan=0.0)
    onehot = (np.asarray(demo_label)[..., None] == np.arange(n_labels)).astype(np.float64)
    return np.einsum("p...d,pdk->p...k", weights, onehot)


def reconstruct(kernel_weight: np.ndarray, demo_label: np.ndarray, n_labels: int) -> np.ndarray:
    """ỹ per prompt (and per pooling/layer/head when those axes are present)."""
    return label_votes(kernel_weight, demo_label, n_labels).argmax(-1)


def head_reconstruction(ds: xr.Dataset, prompts, pools, batch_size: int = 256) -> xr.Dataset:
    """Per-head agreement of ỹ with the prediction ŷ and with gold over `prompts` -> (pooling, layer, head)."""
    prompts = np.sort(np.asarray(prompts, dtype=int))
    if len(prompts) == 0:
        raise ValueError("no prompts to score (check analysis.figure_splits)")
    n_labels = len(label_names(ds))
    shape = (len(pools), ds.sizes["layer"], ds.sizes["head"])
    agree, correct = np.zeros(shape), np.zeros(shape)
    for batch in prompt_batches(prompts, batch_size):
        kw = ds["kernel_weight"].isel(prompt=batch).sel(pooling=list(pools)).values
        y_tilde = reconstruct(kw, ds["demo_label"].isel(prompt=batch).values, n_labels)
        pred = ds["prediction"].isel(prompt=batch).values
        gold = ds["gold"].isel(prompt=batch).values
        agree += (y_tilde == pred[:, None, None, None]).sum(0)
        correct += (y_tilde == gold[:, None, None, None]).sum(0)
    dims = ("pooling", "layer", "head")
    coords = {"pooling": list(pools), "layer": np.arange(shape[1]), "head": np.arange(shape[2])}
    return xr.Dataset(
        {"agree_pred": (dims, agree / len(prompts)), "acc_gold": (dims, correct / len(prompts))},
        coords=coords,
        attrs={"n_prompts": len(prompts)},
    )


def reconstruction_figure(store, png_pred, png_gold, csv, *, pools=(), splits=("select", "heldout"), batch_size=256, title=""):
    """Fig 3a (ỹ vs ŷ) and Fig 3b (ỹ vs gold): layer × head heat-maps per pooling, plus their CSV."""
    ds = open_store(store, needs=["kernel_weight", "demo_label", "prediction", "gold", "split"])
    pools = poolings(ds, pools)
    prompts = np.flatnonzero(split_mask(ds, splits))
    scores = head_reconstruction(ds, prompts, pools, batch_size)
    frame = scores.to_dataframe().reset_index()
    frame["n_prompts"] = scores.attrs["n_prompts"]
    frame.to_csv(csv, index=False, float_format="%.6g")
    what = f"{scores.attrs['n_prompts']} prompts ({'+'.join(splits)})"
    for var, path, label in [
        ("agree_pred", png_pred, "(a) agreement of ỹ with the ICL prediction ŷ"),
        ("acc_gold", png_gold, "(b) accuracy of ỹ against the gold label"),
    ]:
        grids = {p: scores[var].sel(pooling=p).values for p in pools}
        head_heatmaps(grids, path, f"{title}\n{label}, {what}", "accuracy", vmin=0.0, vmax=1.0)
    return scores


def to_frame(scores: xr.Dataset) -> pd.DataFrame:
    """Long table (pooling, layer, head, agree_pred, acc_gold)."""
    return scores.to_dataframe().reset_index()
