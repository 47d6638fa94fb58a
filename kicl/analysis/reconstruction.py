"""Fig 3 numbers: each head's attention read as kernel weights, ỹ = argmax_y Σ_i a_i · 1[y_i = y] (paper §5.2).

a_i is the stored kernel weight of demonstration i (pooling `max` = the paper's maximum over the input
through the label token; `mean`, `sum`, `label` = variants); the vote itself is kicl.analysis.votes.

Two permutation nulls, both re-scoring every head `n_permutations` times:

* the **position-keeping null** (`position_null`, the one the figure marks by): each prompt keeps its own
  demonstration labels and ŷ, and receives the kernel-weight vectors (all heads and poolings together) of
  another prompt with the same number of demonstrations, drawn by a random permutation within each such group.
  Every head keeps its position profile (recency, a fixed slot), its weight scale and the label counts; only
  the alignment of where it looks with what sits there is broken. A head that reproduces ŷ from position alone
  (ICL's own recency bias) is therefore not above it. The statistic is a single-step studentised max-T
  (kicl.analysis.stats.max_t) over **all poolings × heads at once**: each head's agreement is centred and scaled
  by its own null, and the family-wise p-value of a head is the share of permutations whose maximum over all
  poolings and heads reaches its T. One family rather than a pooling fixed in advance, because the figure
  shows every configured pooling side by side and a reader picks heads from any panel; max-T adapts to the
  strong correlation of one head across poolings, so the price over a single pooling is small. A head is
  marked when its family-wise p ≤ 1 − `quantile`.
* the **label-permutation null** (`label_permutation_null`, secondary): the demonstration labels are shuffled
  within each prompt (the label multiset is kept, the slot-label link broken), the maximum over the heads of
  one pooling recorded; p = (1 + #{null max ≥ observed max}) / (1 + n) per pooling. A position-only head beats
  it (it breaks the link between recency and label), so it is reported, not marked.

Plot-free: the drawing is kicl.figures.fig3_reconstruction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import xarray as xr

from kicl.analysis.baselines import FIXED_BASELINES, fixed_predictions, position_kernel, position_predictions
from kicl.analysis.stats import max_t
from kicl.analysis.votes import argmax_votes, label_votes, permute_within_prompts, reconstruct, resolve_ties
from kicl.store.reader import label_names, prompt_batches, split_mask

__all__ = [
    "head_predictions",
    "head_reconstruction",
    "label_permutation_null",
    "label_votes",
    "position_null",
    "position_null_agreement",
    "position_permutations",
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


@dataclass(frozen=True)
class NullOptions:
    """Fig 3's permutation nulls: how many permutations, their seed, and the family-wise quantile of the marks."""

    n_permutations: int = 200
    seed: int = 0
    quantile: float = 0.95


def label_permutation_null(
    ds: xr.Dataset,
    prompts,
    pools,
    null: NullOptions = NullOptions(),
    ties: str = "lowest",
    observed: xr.Dataset | None = None,
) -> xr.Dataset:
    """Label-permutation null per pooling and score (agree_pred, acc_gold): the `quantile` and mean of the max over
    heads and the max-statistic p-value of the best head (`{score}_label_null_q`, `_label_null_mean`, `_label_p_value`).

    `observed` = head_reconstruction(ds, prompts, pools) when already computed.
    """
    n_permutations, seed, quantile = null.n_permutations, null.seed, null.quantile
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
        data[f"{name}_label_null_q"] = (("pooling",), np.quantile(draws, quantile, axis=0))
        data[f"{name}_label_null_mean"] = (("pooling",), draws.mean(0))
        data[f"{name}_best"] = (("pooling",), best)
        data[f"{name}_label_p_value"] = (("pooling",), (1 + (draws >= best - 1e-12).sum(0)) / (1 + n_permutations))
    return xr.Dataset(
        data,
        coords={"pooling": list(pools)},
        attrs={"n_permutations": n_permutations, "quantile": quantile, "seed": seed},
    )


def position_permutations(demo_label, n_permutations: int, rng) -> np.ndarray:
    """(n_permutations, P): row b maps prompt p to the prompt whose kernel weights it receives; a uniform random
    permutation within each group of prompts with the same number of demonstrations (labels ≥ 0)."""
    counts = (np.asarray(demo_label) >= 0).sum(1)
    out = np.empty((n_permutations, len(counts)), dtype=np.int64)
    for count in np.unique(counts):
        members = np.flatnonzero(counts == count)
        keys = rng.random((n_permutations, len(members)))
        out[:, members] = members[np.argsort(keys, axis=1)]
    return out


def position_null_agreement(
    kernel_weight, demo_label, references: dict, n_labels: int, n_permutations: int, seed: int = 0, ties="lowest"
) -> dict:
    """Agreement of every head under the position-keeping null (see the module docstring).

    kernel_weight (P, H, D) for H heads (poolings × layers × heads flattened); references name -> (P,) labels.
    Returns name -> (n_permutations, H): each head's agreement with the reference when prompt p keeps its own
    labels and reference but takes the kernel weights of prompt perm[p] (same number of demonstrations).
    """
    kw = np.nan_to_num(np.asarray(kernel_weight, dtype=np.float64), nan=0.0)
    labels = np.asarray(demo_label)
    onehot = (labels[..., None] == np.arange(n_labels)).astype(np.float64)  # (P, D, K)
    perms = position_permutations(labels, n_permutations, np.random.default_rng(seed))
    out = {name: np.empty((n_permutations, kw.shape[1])) for name in references}
    for b, perm in enumerate(perms):
        y_tilde = argmax_votes(np.matmul(kw[perm], onehot), labels, ties)  # (P, H)
        for name, ref in references.items():
            out[name][b] = (y_tilde == np.asarray(ref)[:, None]).mean(0)
    return out


def position_null(
    ds: xr.Dataset,
    prompts,
    pools,
    null: NullOptions = NullOptions(),
    ties: str = "lowest",
    observed: xr.Dataset | None = None,
) -> xr.Dataset:
    """Position-keeping null, one max-T family over poolings × heads, per score (agree_pred, acc_gold).

    Per (pooling, layer, head): `{score}_position_null_mean` (mean of the permuted agreements),
    `{score}_position_threshold` (the agreement at which T reaches the `quantile` of the max-T null),
    `{score}_position_p` (family-wise p) and `{score}_above_null` (p ≤ 1 − quantile). Attribute-like scalars:
    `{score}_position_p_best` (the smallest family-wise p = the max-statistic p-value).
    """
    n_permutations, seed, quantile = null.n_permutations, null.seed, null.quantile
    if n_permutations < 1:
        raise ValueError(f"analysis.n_permutations must be >= 1, got {n_permutations}")
    prompts = np.sort(np.asarray(prompts, dtype=int))
    observed = head_reconstruction(ds, prompts, pools, ties=ties) if observed is None else observed
    kw = ds["kernel_weight"].isel(prompt=prompts).sel(pooling=list(pools)).values
    n_prompts, n_pools, n_layers, n_heads, n_demos = kw.shape
    refs = {"agree_pred": ds["prediction"].values[prompts], "acc_gold": ds["gold"].values[prompts]}
    null = position_null_agreement(
        kw.reshape(n_prompts, -1, n_demos),
        ds["demo_label"].values[prompts],
        refs,
        len(label_names(ds)),
        n_permutations,
        seed,
        ties,
    )
    dims, shape, data = ("pooling", "layer", "head"), (n_pools, n_layers, n_heads), {}
    for name, draws in null.items():
        test = max_t(observed[name].values.ravel(), draws)
        cut = float(np.quantile(test["null_max"], quantile))
        data[f"{name}_position_null_mean"] = (dims, draws.mean(0).reshape(shape))
        data[f"{name}_position_threshold"] = (dims, (test["centre"] + cut * test["scale"]).reshape(shape))
        data[f"{name}_position_p"] = (dims, test["p_max"].reshape(shape))
        data[f"{name}_above_null"] = (dims, (test["p_max"] <= 1 - quantile + 1e-12).reshape(shape))
        data[f"{name}_position_p_best"] = ((), float(np.nanmin(test["p_max"])))
    coords = {"pooling": list(pools), "layer": np.arange(n_layers), "head": np.arange(n_heads)}
    return xr.Dataset(data, coords=coords, attrs={"n_permutations": n_permutations, "quantile": quantile, "seed": seed})


def reconstruction_scores(
    ds: xr.Dataset,
    prompts,
    pools,
    *,
    batch_size: int = 256,
    ties: str = "lowest",
    null: NullOptions | None = None,
    fit_split: str = "select",
) -> xr.Dataset:
    """Everything Fig 3 shows for `prompts`: per-head scores, the position-only kernel per head, the
    attention-free baselines (fitted on `fit_split`), the position-keeping null (marks) and the label null."""
    prompts = np.sort(np.asarray(prompts, dtype=int))
    fit = np.flatnonzero(np.isin([str(s) for s in ds["split"].values.tolist()], [fit_split]))
    if len(fit) == 0:
        raise ValueError(f"the store has no '{fit_split}' prompts to fit the baselines on (protocol.n_select)")
    n_labels = len(label_names(ds))
    ties = resolve_ties(ties, ds["prediction"].values[fit], n_labels)  # one fitted rule for heads, baselines, nulls
    scores = head_reconstruction(ds, prompts, pools, batch_size, ties)
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
    null = null or NullOptions()
    label_null = label_permutation_null(ds, prompts, pools, null, ties, observed=scores)
    pos_null = position_null(ds, prompts, pools, null, ties, observed=scores)
    scores = xr.merge([scores, label_null, pos_null], combine_attrs="no_conflicts")
    rule = ties if isinstance(ties, str) else "fitted on " + fit_split
    scores.attrs.update(n_prompts=len(prompts), fit_split=fit_split, ties=rule)
    return scores


def reconstruction_frame(scores: xr.Dataset) -> pd.DataFrame:
    """Long table behind Fig 3: one row per (pooling, layer, head) with the head's scores, its position-only
    kernel, the position-keeping null (mean, threshold, family-wise p, `above_null` = marked), the pooling's
    label-permutation null (quantile, mean, p-value of the best head) and every baseline."""
    names = ["agree_pred", "acc_gold", "position_agree_pred", "position_acc_gold"]
    for name in ("agree_pred", "acc_gold"):
        names += [f"{name}_{stat}" for stat in ("position_null_mean", "position_threshold", "position_p", "above_null")]
    frame = scores[names].to_dataframe().reset_index()
    for name in ("agree_pred", "acc_gold"):
        frame[f"{name}_position_p_best"] = float(scores[f"{name}_position_p_best"])
        for stat in ("label_null_q", "label_null_mean", "label_p_value"):
            frame[f"{name}_{stat}"] = frame["pooling"].map(
                dict(zip(scores["pooling"].values, scores[f"{name}_{stat}"].values))
            )
        for b, value in zip(scores["baseline"].values, scores[f"baseline_{name}"].values):
            frame[f"{name}_baseline_{b}"] = value
    frame["n_prompts"] = scores.attrs["n_prompts"]
    frame["n_permutations"] = scores.attrs["n_permutations"]
    frame["null_quantile"] = scores.attrs["quantile"]
    return frame
