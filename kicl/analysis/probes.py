"""Fig 5 numbers: ridge probes on keys -> argmax_o P(o|x_i) and on values -> y_i at offsets −1…+3 (paper §5.4).

For every (layer, kv head, offset), a ridge regression with intercept (λ = `analysis.probe_alpha`) maps the
vector at label_pos + offset of each demonstration to one-hot targets; the prediction is the argmax, the
score is accuracy on held-out demonstrations. This is the decision rule of sklearn's RidgeClassifier (tested).

Split by demonstration text: the distinct demonstration inputs (`demo_text`, else `demo_pool_index`) are split
into train/test (`analysis.probe_test_fraction` of the distinct texts, seeded), and every occurrence of a text
lands on the side of its text. A text that is in several prompts is therefore never on both sides (the key
target is a function of the text alone). Test items whose class never occurs in training count as wrong.

Reference lines, all on the same test items:
* the majority class of the training targets;
* a shuffled-target null: the probes refit with the training targets permuted (`analysis.probe_null_shuffles`
  times; the ridge system is solved once for all of them), test targets untouched. Two lines come from it:
  `null_q95`, the 95% quantile of every probe's null accuracy pooled (a per-probe line: about 5% of the
  offsets × layers × heads probes exceed it under H0), and `null_fw_q95`, the family-wise line: the maximum
  over all probes of one shuffle, then the 95% quantile over shuffles (a probe above it beats the null with
  the family-wise error kept at 5%; it needs ≥ 20 shuffles to mean anything);
* at offset 0, a token-identity baseline: the vector there sits on the label token itself, so a lookup from
  the label token (`label_token_ids[y_i]`, or y_i when the store lacks them) to the majority training target of
  that token is what "the label token is the label token" alone achieves.
Each accuracy has a standard error clustered by demonstration text (repeated texts are not independent).
Plot-free: the drawing is in kicl.figures.fig5_kv_probes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import xarray as xr

log = logging.getLogger(__name__)

TARGETS = {"keys": "demo_top_token", "keys_prerope": "demo_top_token", "values": "demo_label"}


def ridge_fit_predict_many(x_train: np.ndarray, y_trains: np.ndarray, x_test: np.ndarray, alpha: float) -> np.ndarray:
    """One-hot ridge classifiers for several target vectors on the same inputs.

    x_train (G, n, d), y_trains (S, n) ints, x_test (G, m, d) -> (S, G, m) predicted labels. The ridge system is
    solved once: scores = H (onehot - prior) + prior with the hat-like H = (x_test - mean) (XᵀX + λI)⁻¹ Xᵀ of
    shape (G, m, n), and H·onehot is a sum of H's columns per class (cheap for many classes and shuffles).
    """
    y_trains = np.atleast_2d(y_trains)
    classes, y_index = np.unique(y_trains, return_inverse=True)
    y_index = y_index.reshape(y_trains.shape)
    x_train = x_train.astype(np.float64)
    mean_x = x_train.mean(1, keepdims=True)
    xc = x_train - mean_x
    xct = xc.transpose(0, 2, 1)
    gram = xct @ xc + alpha * np.eye(x_train.shape[2])
    hat = (x_test.astype(np.float64) - mean_x) @ np.linalg.solve(gram, xct)  # (G, m, n)
    hat_total = hat.sum(-1, keepdims=True)
    out = np.empty((len(y_trains),) + x_test.shape[:2], dtype=classes.dtype)
    for index, y_idx in enumerate(y_index):
        counts = np.bincount(y_idx, minlength=len(classes))
        present = np.flatnonzero(counts)
        order = np.argsort(y_idx, kind="stable")
        starts = np.concatenate([[0], np.cumsum(counts[present])[:-1]])
        sums = np.zeros(x_test.shape[:2] + (len(classes),))
        sums[..., present] = np.add.reduceat(hat[..., order], starts, axis=-1)
        prior = counts / counts.sum()
        scores = sums - hat_total * prior + prior
        out[index] = classes[scores.argmax(-1)]
    return out


def ridge_fit_predict(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, alpha: float) -> np.ndarray:
    """Batched one-hot ridge classifier: x_train (G, n, d), y_train (n,) ints, x_test (G, m, d) -> (G, m) labels."""
    return ridge_fit_predict_many(x_train, y_train[None], x_test, alpha)[0]


def group_split(groups: np.ndarray, test_fraction: float, seed: int) -> np.ndarray:
    """Boolean "is test" per item: a seeded share of the distinct `groups` is test, every item follows its group."""
    unique, inverse = np.unique(groups, return_inverse=True)
    if len(unique) < 2:
        raise ValueError(
            f"probes need at least 2 distinct demonstration texts, the kv prompts have {len(unique)} "
            "(capture.kv_prompts)"
        )
    n_test = int(np.clip(round(test_fraction * len(unique)), 1, len(unique) - 1))
    test_groups = np.zeros(len(unique), bool)
    test_groups[np.random.default_rng(seed).permutation(len(unique))[:n_test]] = True
    return test_groups[inverse.ravel()]


def demo_groups(ds: xr.Dataset, kv_ids: np.ndarray) -> tuple[np.ndarray, str]:
    """Grouping key per (kv prompt, demo): the demonstration text, else its pool row, else (old stores) the prompt."""
    if "demo_text" in ds.variables:
        text = np.array(np.asarray(ds["demo_text"].isel(prompt=kv_ids).values).tolist(), dtype=str)
        if (text != "").any():
            return text, "demo_text"
    if "demo_pool_index" in ds.variables:
        pool = ds["demo_pool_index"].isel(prompt=kv_ids).values
        if (pool >= 0).any():
            return pool.astype(str), "demo_pool_index"
    log.warning("the store has neither demo_text nor demo_pool_index: the probe split falls back to whole prompts")
    return np.repeat(kv_ids.astype(str)[:, None], ds.sizes["demo"], axis=1), "prompt"


def clustered_se(correct: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Standard error of the mean of `correct` (..., m) with items clustered by `groups` (m,) (CR1 sandwich)."""
    _, inverse = np.unique(groups, return_inverse=True)
    n_groups, m = inverse.max() + 1, len(groups)
    member = np.zeros((m, n_groups))
    member[np.arange(m), inverse] = 1.0
    correct = correct.astype(float)
    resid = correct - correct.mean(-1, keepdims=True)
    sums = resid @ member  # (..., n_groups)
    factor = n_groups / (n_groups - 1) if n_groups > 1 else np.nan
    return np.sqrt(factor * (sums**2).sum(-1)) / m


def identity_baseline(tokens_train, y_train, tokens_test, y_test) -> float:
    """Accuracy of predicting the majority training target of each token (unseen token: the overall majority)."""
    classes, counts = np.unique(y_train, return_counts=True)
    overall = classes[counts.argmax()]
    lookup = {}
    for token in np.unique(tokens_train):
        values, n = np.unique(y_train[tokens_train == token], return_counts=True)
        lookup[token] = values[n.argmax()]
    pred = np.array([lookup.get(t, overall) for t in tokens_test])
    return float((pred == y_test).mean())


@dataclass(frozen=True)
class ProbeOptions:
    """Fig 5's probes: ridge strength, held-out share of demonstration texts, seed, shuffled-target nulls, and which
    keys are probed (``keys`` after rotary embedding, or ``keys_prerope``)."""

    alpha: float = 0.01
    test_fraction: float = 0.2
    seed: int = 0
    n_null: int = 20
    keys: str = "keys"


def probe_accuracy(
    ds: xr.Dataset, variable: str, alpha: float, test_fraction: float, seed: int, n_null: int = 20
) -> xr.Dataset:
    """Accuracy, its clustered SE and the shuffled-target null (offset, layer, kv_head) of the probe on `variable`."""
    kv_ids = ds["kv_prompt"].values.astype(int)
    target = ds[TARGETS[variable]].isel(prompt=kv_ids).values  # (K, D)
    groups, split_unit = demo_groups(ds, kv_ids)
    valid = target >= 0
    if split_unit != "prompt":
        valid &= (groups != "") & (groups != "-1")
    if valid.sum() < 2:
        raise ValueError(f"no demonstrations with a {TARGETS[variable]} target among the kv prompts")
    is_test = np.zeros(valid.shape, bool)
    is_test[valid] = group_split(groups[valid], test_fraction, seed)
    tr_mask, te_mask = valid & ~is_test, valid & is_test
    y_train, y_test = target[tr_mask], target[te_mask]
    g_train, g_test = groups[tr_mask], groups[te_mask]
    assert not set(g_train) & set(g_test), "a demonstration text on both sides of the probe split"
    rng = np.random.default_rng(seed + 1)
    y_sets = np.stack([y_train] + [rng.permutation(y_train) for _ in range(n_null)])
    data = ds[variable]  # (K, layer, kv_head, demo, offset, dim)
    n_layers, n_heads, n_offsets = ds.sizes["layer"], ds.sizes["kv_head"], ds.sizes["offset"]
    shape = (n_offsets, n_layers, n_heads)
    acc, se, null = np.full(shape, np.nan), np.full(shape, np.nan), np.full((n_null,) + shape, np.nan)
    for lay in range(n_layers):
        block = data.isel(layer=lay).values.transpose(1, 3, 0, 2, 4)  # (H, O, K, D, dim)
        x_tr = np.nan_to_num(block[:, :, tr_mask]).reshape(n_heads * n_offsets, len(y_train), -1)
        x_te = np.nan_to_num(block[:, :, te_mask]).reshape(n_heads * n_offsets, len(y_test), -1)
        correct = ridge_fit_predict_many(x_tr, y_sets, x_te, alpha) == y_test  # (1 + S, H*O, m)
        acc[:, lay, :] = correct[0].mean(-1).reshape(n_heads, n_offsets).T
        se[:, lay, :] = clustered_se(correct[0], g_test).reshape(n_heads, n_offsets).T
        null[:, :, lay, :] = correct[1:].mean(-1).reshape(n_null, n_heads, n_offsets).transpose(0, 2, 1)
    classes, counts = np.unique(y_train, return_counts=True)
    majority = float((y_test == classes[counts.argmax()]).mean())
    label_ids = ds.attrs.get("label_token_ids")
    labels = ds["demo_label"].isel(prompt=kv_ids).values
    tokens = np.asarray(label_ids)[np.clip(labels, 0, None)] if label_ids is not None else labels
    identity = identity_baseline(tokens[tr_mask], y_train, tokens[te_mask], y_test)
    attrs = {
        "variable": variable,
        "target": TARGETS[variable],
        "majority": majority,
        "identity_offset0": identity,
        "null_mean": float(np.nanmean(null)) if n_null else np.nan,
        "null_q95": float(np.nanquantile(null, 0.95)) if n_null else np.nan,
        "null_fw_q95": float(np.quantile(np.nanmax(null.reshape(n_null, -1), 1), 0.95)) if n_null else np.nan,
        "n_null": n_null,
        "n_train": len(y_train),
        "n_test": len(y_test),
        "n_train_texts": len(set(g_train)),
        "n_test_texts": len(set(g_test)),
        "n_classes": len(classes),
        "split_unit": split_unit,
    }
    dims = ("offset", "layer", "kv_head")
    return xr.Dataset(
        {"accuracy": (dims, acc), "se": (dims, se), "null_accuracy": (dims, null.mean(0) if n_null else acc * np.nan)},
        coords={"offset": ds["offset"].values, "layer": np.arange(n_layers), "kv_head": np.arange(n_heads)},
        attrs=attrs,
    )


def probe_frame(result: xr.Dataset):
    """One CSV row per (offset, layer, kv_head) with accuracy, SE, null accuracy and every reference line."""
    frame = result.to_dataframe().reset_index()
    for key, value in result.attrs.items():
        frame[key] = value
    frame["identity_baseline"] = np.where(frame["offset"] == 0, result.attrs["identity_offset0"], np.nan)
    return frame.drop(columns=["identity_offset0"])
