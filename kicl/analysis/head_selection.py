"""Head selection for Table 2: choose a head on `select`, score it on `heldout`, with a nested bootstrap.

The selected head is the one whose reconstruction ỹ agrees most with ŷ on the select prompts (ties: lowest
layer, then head). `head_ranking` gives every head's select and held-out numbers (a public ranking, also
used to choose heads for ablations). `nested_bootstrap` resamples select and held-out prompts
independently; inside each resample the head is chosen again on the resampled select prompts and the
select-fitted baselines (constant ŷ, gold majority, position-only kernel) are refitted, so the intervals
include the selection's own variability. `nested=False` keeps the head and the fits of the full select set
and resamples held-out prompts only (intervals conditional on the choice).

Paired comparisons (selected head − each baseline, and − encoder kernel regression) use the same
resamples; the two-sided p-value is kicl.analysis.stats.bootstrap_p.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from kicl.analysis import stats
from kicl.analysis.baselines import FIXED_BASELINES, fixed_predictions
from kicl.analysis.reconstruction import head_predictions
from kicl.analysis.votes import argmax_votes, resolve_ties
from kicl.store.reader import label_names, open_store, split_mask

REFERENCES = ("prediction", "gold")


def _split_prompts(ds, split: str) -> np.ndarray:
    prompts = np.flatnonzero(split_mask(ds, [split]))
    if len(prompts) == 0:
        key = "protocol.n_select" if split == "select" else "protocol.n_heldout"
        raise ValueError(f"the store has no '{split}' prompts ({key})")
    return prompts


def head_ranking(
    store,
    pooling: str = "max",
    select_split: str = "select",
    score_split: str = "heldout",
    ties: str = "lowest",
    batch_size: int = 256,
) -> pd.DataFrame:
    """Every head with its agreement with ŷ on `select_split` and its agreement/accuracy on `score_split`.

    `store` is a path or an open dataset. Sorted by select agreement (descending; ties lowest layer, then
    head); `rank` 1 is the head Table 2 selects.
    """
    ds = (
        store
        if hasattr(store, "sizes")
        else open_store(store, needs=["kernel_weight", "demo_label", "prediction", "gold", "split"])
    )
    frames = {}
    for split in (select_split, score_split):
        prompts = _split_prompts(ds, split)
        yt = head_predictions(ds, prompts, [pooling], batch_size, ties)[:, 0]
        frames[split] = (
            (yt == ds["prediction"].values[prompts][:, None, None]).mean(0),
            (yt == ds["gold"].values[prompts][:, None, None]).mean(0),
        )
    n_layers, n_heads = ds.sizes["layer"], ds.sizes["head"]
    frame = pd.DataFrame(
        {
            "layer": np.repeat(np.arange(n_layers), n_heads),
            "head": np.tile(np.arange(n_heads), n_layers),
            "select_agreement": frames[select_split][0].ravel(),
            "select_accuracy": frames[select_split][1].ravel(),
            "heldout_agreement": frames[score_split][0].ravel(),
            "heldout_accuracy": frames[score_split][1].ravel(),
        }
    )
    frame = frame.sort_values(["select_agreement", "layer", "head"], ascending=[False, True, True], kind="stable")
    frame.insert(0, "rank", np.arange(1, len(frame) + 1))
    frame.attrs["pooling"] = pooling
    return frame.reset_index(drop=True)


def select_head(ds, pooling: str, split: str = "select", ties: str = "lowest") -> tuple[int, int, float]:
    """(layer, head, agreement) of the head whose reconstruction agrees most with ŷ on `split`."""
    prompts = _split_prompts(ds, split)
    yt = head_predictions(ds, prompts, [pooling], ties=ties)[:, 0]
    grid = (yt == ds["prediction"].values[prompts][:, None, None]).mean(0)
    layer, head = np.unravel_index(np.argmax(grid), grid.shape)
    return int(layer), int(head), float(grid[layer, head])


@dataclass
class SelectionData:
    """Per-prompt arrays behind Table 2 for one store and pooling (M = layer × head, layer-major)."""

    n_labels: int
    n_heads: int  # heads per layer, to turn a flat index into (layer, head)
    sel_yt: np.ndarray  # (P_s, M) ỹ on select
    sel_pred: np.ndarray
    sel_gold: np.ndarray
    sel_kw: np.ndarray  # (P_s, M, D) kernel weights on select (for the position-only kernel)
    held_yt: np.ndarray  # (P_h, M)
    held_pred: np.ndarray
    held_gold: np.ndarray
    held_demo_label: np.ndarray  # (P_h, D)
    held_prompts: np.ndarray  # store rows of the held-out prompts
    ties: str = "lowest"
    extra: dict = field(default_factory=dict)  # name -> (P_h,) further fixed predictors (encoder KR)


def selection_data(
    ds,
    pooling: str,
    ties: str = "lowest",
    batch_size: int = 256,
    select_split: str = "select",
    score_split: str = "heldout",
) -> SelectionData:
    sel, held = _split_prompts(ds, select_split), _split_prompts(ds, score_split)
    n_layers, n_heads = ds.sizes["layer"], ds.sizes["head"]
    m = n_layers * n_heads
    sel_kw = ds["kernel_weight"].isel(prompt=sel).sel(pooling=pooling).values.astype(np.float64)
    return SelectionData(
        n_labels=len(label_names(ds)),
        n_heads=n_heads,
        sel_yt=head_predictions(ds, sel, [pooling], batch_size, ties)[:, 0].reshape(len(sel), m),
        sel_pred=ds["prediction"].values[sel],
        sel_gold=ds["gold"].values[sel],
        sel_kw=sel_kw.reshape(len(sel), m, -1),
        held_yt=head_predictions(ds, held, [pooling], batch_size, ties)[:, 0].reshape(len(held), m),
        held_pred=ds["prediction"].values[held],
        held_gold=ds["gold"].values[held],
        held_demo_label=ds["demo_label"].values[held],
        held_prompts=held,
        ties=resolve_ties(ties, ds["prediction"].values[sel], len(label_names(ds))),
    )


def _majority_rows(weights, labels, n_labels):
    """Per row of `weights` (R, P): the weighted majority label (ties: lowest)."""
    onehot = (np.asarray(labels)[:, None] == np.arange(n_labels)).astype(np.float64)
    return (weights @ onehot).argmax(1)


def _statistics(d: SelectionData, count_sel, count_held) -> tuple[dict, np.ndarray]:
    """Scores {(predictor, reference): (R,)} under prompt multiplicities count_sel (R, P_s), count_held (R, P_h)."""
    w_sel = count_sel / count_sel.sum(1, keepdims=True)
    w_held = count_held / count_held.sum(1, keepdims=True)
    r, n_held = len(count_sel), len(d.held_pred)
    pick = (w_sel @ (d.sel_yt == d.sel_pred[:, None])).argmax(1)  # (R,) flat head index, first max
    fixed = fixed_predictions(
        d.held_demo_label, d.n_labels, select_prediction=d.sel_pred, select_gold=d.sel_gold, ties=d.ties
    )
    preds = {
        "icl": np.broadcast_to(d.held_pred, (r, n_held)),
        "head": d.held_yt[:, pick].T,
        "constant": np.repeat(_majority_rows(w_sel, d.sel_pred, d.n_labels)[:, None], n_held, 1),
        "gold_majority": np.repeat(_majority_rows(w_sel, d.sel_gold, d.n_labels)[:, None], n_held, 1),
    }
    for name in FIXED_BASELINES[2:]:
        preds[name] = np.broadcast_to(fixed[name], (r, n_held))
    kw = d.sel_kw[:, pick, :]  # (P_s, R, D)
    present = np.isfinite(kw)
    total = np.einsum("rp,prd->rd", count_sel, np.where(present, kw, 0.0))
    n = np.einsum("rp,prd->rd", count_sel, present.astype(np.float64))
    slot_weight = np.divide(total, n, out=np.zeros_like(total), where=n > 0)  # (R, D)
    onehot = (d.held_demo_label[..., None] == np.arange(d.n_labels)).astype(np.float64)  # (P_h, D, K)
    votes = np.einsum("rd,pdk->prk", slot_weight, onehot)
    preds["position"] = argmax_votes(votes, d.held_demo_label, d.ties).T
    for name, values in d.extra.items():
        preds[name] = np.broadcast_to(np.asarray(values), (r, n_held))
    refs = {"prediction": d.held_pred, "gold": d.held_gold}
    scores = {(name, ref): (w_held * (p == refs[ref])).sum(1) for name, p in preds.items() for ref in REFERENCES}
    return scores, pick, preds


def nested_bootstrap(d: SelectionData, n_boot: int, seed: int, level: float, nested: bool = True) -> dict:
    """Point estimates, intervals and paired differences for Table 2.

    Returns {"head": (layer, head), "select_agreement", "stability" (share of resamples choosing the same
    head), "scores": {(predictor, ref): (value, low, high)}, "diffs": {(predictor, ref): (Δ, low, high, p)},
    "preds": predictor -> (P_h,) point predictions, "resampled": {"preds": predictor -> (B, P_h) predictions in
    each resample, "weights": (B, P_h) multiplicity of each held-out prompt in each resample}}.
    """
    n_sel, n_held = len(d.sel_pred), len(d.held_pred)
    point, pick, preds = _statistics(d, np.ones((1, n_sel)), np.ones((1, n_held)))
    rng = np.random.default_rng(seed)
    count_sel = stats.bootstrap_counts(rng, n_sel, n_boot) if nested else np.ones((n_boot, n_sel))
    count_held = stats.bootstrap_counts(rng, n_held, n_boot)
    boot, boot_pick, boot_preds = _statistics(d, count_sel, count_held)
    scores = {key: (float(point[key][0]), *stats.percentile_interval(boot[key], level)) for key in point}
    diffs = {}
    for (name, ref), values in boot.items():
        if name in ("head", "icl"):
            continue
        delta = boot[("head", ref)] - values
        diffs[(name, ref)] = (
            float(point[("head", ref)][0] - point[(name, ref)][0]),
            *stats.percentile_interval(delta, level),
            stats.bootstrap_p(delta),
        )
    flat = int(pick[0])
    select_agreement = float((d.sel_yt[:, flat] == d.sel_pred).mean())
    return {
        "head": divmod(flat, d.n_heads),
        "select_agreement": select_agreement,
        "stability": float((boot_pick == flat).mean()) if nested else 1.0,
        "scores": scores,
        "diffs": diffs,
        "preds": {name: p[0] for name, p in preds.items()},
        "resampled": {"preds": boot_preds, "weights": count_held},
    }
