"""Fig 3 numbers: each head's attention read as kernel weights, ỹ = argmax_y Σ_i a_i · 1[y_i = y] (paper §5.2).

a_i is the stored kernel weight of demonstration i (pooling `max` = the paper's maximum over the input
through the label token; `mean`, `sum`, `label` = variants); the vote itself is kicl.analysis.votes.

Beside the per-head agreement this module computes the permutation null of the best-of-all-heads pick
(`permutation_null`): the demonstration labels are shuffled within each prompt (the prompt's label multiset,
and so every label-count baseline, is kept; the link between where a head looks and which label sits
there is broken), every head is re-scored and the maximum over heads recorded, `n_permutations` times.
The max-statistic p-value of the observed best head is (1 + #{null max ≥ observed max}) / (1 + n).
Plot-free: the drawing is kicl.figures.fig3_reconstruction.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from kicl.analysis.baselines import FIXED_BASELINES, fixed_predictions, position_kernel, position_predictions
from kicl.analysis.votes import argmax_votes, label_votes, permute_within_prompts, reconstruct, resolve_ties
from kicl.store.reader import label_names, prompt_batches, split_mask

__all__ = [
    "head_predictions",
    "head_reconstruction",
    "label_votes",
    "permutation_null",
    "reconstruct",
    "reconstruction_frame",
    "reconstruction_scores",
]


def head_predictions(ds: xr.Dataset, prompts, pools, batch_size: int = 256, ties: str = "lowest") -> np.ndarray:
    """ỹ (P, pooling, layer, head) of the sorted `prompts` (row indices)."""
    prompts = np.asarray(prompts, dtype=int)
    n_labels = len(label_names(ds))
    ties = resolve_ties(ties, ds["prediction"].values[split_mask(ds, ["select"])], n_labels)
    out = np.empty((len(prompts), len(pools), ds.sizes["layer"], ds.sizes["head"]), dtype=np.int64)
    start = 0
    for batch in prompt_batches(prompts, batch_size):
        kw = ds["kernel_weight"].isel(prompt=batch).sel(pooling=list(pools)).values
        out[start : start + len(batch)] = reconstruct(kw, ds["demo_label"].isel(prompt=batch).values, n_labels, ties)
        start += len(batch)
    return out


def head_reconstruction(ds: xr.Dataset, prompts, pools, batch_size: int = 256, ties: str = "lowest") -> xr.Dataset:
    """Per-head agreement of ỹ with the prediction ŷ and with gold over `prompts` -> (pooling, layer, head)."""
    prompts = np.sort(np.asarray(prompts, dtype=int))
    if len(prompts) == 0:
        raise ValueError("no prompts to score (check analysis.figure_splits)")
    y_tilde = head_predictions(ds, prompts, pools, batch_size, ties)
    pred = ds["prediction"].values[prompts][:, None, None, None]
    gold = ds["gold"].values[prompts][:, None, None, None]
    dims = ("pooling", "layer", "head")
    coords = {"pooling": list(pools), "layer": np.arange(ds.sizes["layer"]), "head": np.arange(ds.sizes["head"])}
    return xr.Dataset(
        {"agree_pred": (dims, (y_tilde == pred).mean(0)), "acc_gold": (dims, (y_tilde == gold).mean(0))},
        coords=coords,
        attrs={"n_prompts": len(prompts)},
    )


def null_max(
    kernel_weight, demo_label, references: dict, n_labels: int, n_permutations: int, seed: int = 0, ties: str = "lowest"
) -> dict:
    """Null distribution of the best head's score under within-prompt label permutation.

    kernel_weight (P, G, M, D) with G groups (poolings) of M heads each; references name -> (P,) labels
    (e.g. ŷ and gold). Returns name -> (n_permutations, G): the maximum over the M heads of each group.
    """
    kw = np.nan_to_num(np.asarray(kernel_weight, dtype=np.float64), nan=0.0)
    n_prompts, n_groups, n_heads, n_demos = kw.shape
    flat = kw.reshape(n_prompts, n_groups * n_heads, n_demos)
    rng = np.random.default_rng(seed)
    out = {name: np.empty((n_permutations, n_groups)) for name in references}
    for i in range(n_permutations):
        labels = permute_within_prompts(demo_label, rng)
        onehot = (labels[..., None] == np.arange(n_labels)).astype(np.float64)
        votes = np.matmul(flat, onehot)  # (P, G*M, K)
        y_tilde = argmax_votes(votes, labels, ties).reshape(n_prompts, n_groups, n_heads)
        for name, ref in references.items():
            out[name][i] = (y_tilde == np.asarray(ref)[:, None, None]).mean(0).max(-1)
    return out


def permutation_null(
    ds: xr.Dataset,
    prompts,
    pools,
    n_permutations: int = 200,
    seed: int = 0,
    quantile: float = 0.95,
    ties: str = "lowest",
    observed: xr.Dataset | None = None,
) -> xr.Dataset:
    """Per pooling and score (agree_pred, acc_gold): the null's `quantile`, its mean and the max-statistic p-value.

    `observed` = head_reconstruction(ds, prompts, pools) when already computed.
    """
    if n_permutations < 1:
        raise ValueError(f"analysis.n_permutations must be >= 1, got {n_permutations}")
    prompts = np.sort(np.asarray(prompts, dtype=int))
    observed = head_reconstruction(ds, prompts, pools, ties=ties) if observed is None else observed
    kw = ds["kernel_weight"].isel(prompt=prompts).sel(pooling=list(pools)).values
    n_prompts, n_pools, n_layers, n_heads, n_demos = kw.shape
    refs = {"agree_pred": ds["prediction"].values[prompts], "acc_gold": ds["gold"].values[prompts]}
    null = null_max(
        kw.reshape(n_prompts, n_pools, n_layers * n_heads, n_demos),
        ds["demo_label"].values[prompts],
        refs,
        len(label_names(ds)),
        n_permutations,
        seed,
        ties,
    )
    data = {}
    for name, draws in null.items():
        best = observed[name].values.reshape(n_pools, -1).max(-1)
        data[f"{name}_null_q"] = (("pooling",), np.quantile(draws, quantile, axis=0))
        data[f"{name}_null_mean"] = (("pooling",), draws.mean(0))
        data[f"{name}_best"] = (("pooling",), best)
        data[f"{name}_p_value"] = (("pooling",), (1 + (draws >= best - 1e-12).sum(0)) / (1 + n_permutations))
    return xr.Dataset(
        data,
        coords={"pooling": list(pools)},
        attrs={"n_permutations": n_permutations, "quantile": quantile, "seed": seed},
    )


def reconstruction_scores(
    ds: xr.Dataset,
    prompts,
    pools,
    *,
    batch_size: int = 256,
    ties: str = "lowest",
    n_permutations: int = 200,
    seed: int = 0,
    quantile: float = 0.95,
    fit_split: str = "select",
) -> xr.Dataset:
    """Everything Fig 3 shows for `prompts`: per-head scores, the position-only kernel per head, the
    attention-free baselines (fitted on `fit_split`) and the permutation null of the best head."""
    prompts = np.sort(np.asarray(prompts, dtype=int))
    scores = head_reconstruction(ds, prompts, pools, batch_size, ties)
    fit = np.flatnonzero(np.isin([str(s) for s in ds["split"].values.tolist()], [fit_split]))
    if len(fit) == 0:
        raise ValueError(f"the store has no '{fit_split}' prompts to fit the baselines on (protocol.n_select)")
    n_labels = len(label_names(ds))
    labels = ds["demo_label"].values[prompts]
    refs = {"agree_pred": ds["prediction"].values[prompts], "acc_gold": ds["gold"].values[prompts]}
    fixed = fixed_predictions(
        labels, n_labels, select_prediction=ds["prediction"].values[fit], select_gold=ds["gold"].values[fit], ties=ties
    )
    weights = position_kernel(ds["kernel_weight"].isel(prompt=fit).sel(pooling=list(pools)).values)
    position = position_predictions(weights, labels, n_labels, ties)  # (P, pooling, layer, head)
    for name, ref in refs.items():
        scores[f"position_{name}"] = (("pooling", "layer", "head"), (position == ref[:, None, None, None]).mean(0))
        scores[f"baseline_{name}"] = (("baseline",), [float((fixed[b] == ref).mean()) for b in FIXED_BASELINES])
    scores = scores.assign_coords(baseline=list(FIXED_BASELINES))
    null = permutation_null(ds, prompts, pools, n_permutations, seed, quantile, ties, observed=scores)
    scores = xr.merge([scores, null], combine_attrs="no_conflicts")
    scores.attrs.update(n_prompts=len(prompts), fit_split=fit_split, ties=ties)
    return scores


def reconstruction_frame(scores: xr.Dataset) -> pd.DataFrame:
    """Long table behind Fig 3: one row per (pooling, layer, head) with the head's scores, its position-only
    kernel, the pooling's null quantile / p-value, whether the head is above the null, and every baseline."""
    names = ["agree_pred", "acc_gold", "position_agree_pred", "position_acc_gold"]
    frame = scores[names].to_dataframe().reset_index()
    for name in ("agree_pred", "acc_gold"):
        for stat in ("null_q", "null_mean", "p_value"):
            frame[f"{name}_{stat}"] = frame["pooling"].map(
                dict(zip(scores["pooling"].values, scores[f"{name}_{stat}"].values))
            )
        frame[f"{name}_above_null"] = frame[name] > frame[f"{name}_null_q"]
        for b, value in zip(scores["baseline"].values, scores[f"baseline_{name}"].values):
            frame[f"{name}_baseline_{b}"] = value
    frame["n_prompts"] = scores.attrs["n_prompts"]
    frame["n_permutations"] = scores.attrs["n_permutations"]
    frame["null_quantile"] = scores.attrs["quantile"]
    return frame
