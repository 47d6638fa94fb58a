"""Fig 5: ridge probes on keys -> argmax_o P(o|x_i) and on values -> y_i at offsets −1…+3 (paper §5.4).

For every (layer, kv head, offset), a ridge regression with intercept (λ = `analysis.probe_alpha`) maps the
vector at label_pos + offset of each demonstration to one-hot targets; the prediction is the argmax, the
score is accuracy on held-out prompts. This is the decision rule of sklearn's RidgeClassifier (tested).
Prompts (not demonstrations) are split into train/test (`analysis.probe_test_fraction`, seeded), so a test
prompt's demonstrations are never seen in training. Test items whose class never occurs in training count as
wrong. The majority-class rate of the training targets on the test items is reported as the chance line.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from kicl.figures.style import BASELINE_COLORS, MAIN_COLOR, figure_style, plt, save_figure
from kicl.store.reader import open_store

TARGETS = {"keys": "demo_top_token", "keys_prerope": "demo_top_token", "values": "demo_label"}


def ridge_fit_predict(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, alpha: float) -> np.ndarray:
    """Batched one-hot ridge classifier: x_train (G, n, d), y_train (n,) ints, x_test (G, m, d) -> (G, m) labels."""
    classes, y_index = np.unique(y_train, return_inverse=True)
    onehot = np.eye(len(classes))[y_index]
    x_train = x_train.astype(np.float64)
    mean_x = x_train.mean(1, keepdims=True)
    xc = x_train - mean_x
    yc = onehot - onehot.mean(0)
    gram = xc.transpose(0, 2, 1) @ xc + alpha * np.eye(x_train.shape[2])
    weights = np.linalg.solve(gram, xc.transpose(0, 2, 1) @ yc)  # (G, d, C)
    scores = (x_test.astype(np.float64) - mean_x) @ weights + onehot.mean(0)
    return classes[scores.argmax(-1)]


def split_prompts(n_prompts: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/test split of prompt rows (at least one of each)."""
    if n_prompts < 2:
        raise ValueError(f"probes need at least 2 prompts with keys/values, the store has {n_prompts} (capture.kv_prompts)")
    n_test = int(np.clip(round(test_fraction * n_prompts), 1, n_prompts - 1))
    order = np.random.default_rng(seed).permutation(n_prompts)
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def probe_accuracy(ds: xr.Dataset, variable: str, alpha: float, test_fraction: float, seed: int) -> xr.Dataset:
    """Accuracy (offset, layer, kv_head) of the ridge probe on `variable` ('keys', 'keys_prerope' or 'values')."""
    kv_ids = ds["kv_prompt"].values.astype(int)
    target = ds[TARGETS[variable]].isel(prompt=kv_ids).values  # (K, D)
    train, test = split_prompts(len(kv_ids), test_fraction, seed)
    valid = target >= 0
    tr_mask, te_mask = valid[train], valid[test]
    y_train, y_test = target[train][tr_mask], target[test][te_mask]
    if len(y_train) == 0 or len(y_test) == 0:
        raise ValueError(f"no demonstrations with a {TARGETS[variable]} target in the probe train/test split")
    data = ds[variable]  # (K, layer, kv_head, demo, offset, dim)
    n_layers, n_heads, n_offsets = ds.sizes["layer"], ds.sizes["kv_head"], ds.sizes["offset"]
    acc = np.full((n_offsets, n_layers, n_heads), np.nan)
    for lay in range(n_layers):
        block = data.isel(layer=lay).values  # (K, H, D, O, dim)
        x_tr = block[train].transpose(1, 3, 0, 2, 4)[:, :, tr_mask]  # (H, O, n, dim)
        x_te = block[test].transpose(1, 3, 0, 2, 4)[:, :, te_mask]
        x_tr = np.nan_to_num(x_tr).reshape(n_heads * n_offsets, len(y_train), -1)
        x_te = np.nan_to_num(x_te).reshape(n_heads * n_offsets, len(y_test), -1)
        pred = ridge_fit_predict(x_tr, y_train, x_te, alpha)
        acc[:, lay, :] = (pred == y_test).mean(-1).reshape(n_heads, n_offsets).T
    classes, counts = np.unique(y_train, return_counts=True)
    majority = float((y_test == classes[counts.argmax()]).mean())
    return xr.Dataset(
        {"accuracy": (("offset", "layer", "kv_head"), acc)},
        coords={"offset": ds["offset"].values, "layer": np.arange(n_layers), "kv_head": np.arange(n_heads)},
        attrs={"variable": variable, "target": TARGETS[variable], "majority": majority, "n_train": len(y_train), "n_test": len(y_test), "n_classes": len(classes)},
    )


def plot_probe(result: xr.Dataset, path, title: str) -> None:
    """A panel per offset: a point per head (accuracy vs layer), the per-layer mean curve, the chance line."""
    offsets = result["offset"].values
    layers = result["layer"].values
    with figure_style():
        fig, axes = plt.subplots(1, len(offsets), figsize=(3.0 * len(offsets), 3.4), sharey=True, squeeze=False, layout="constrained")
        jitter = np.linspace(-0.25, 0.25, result.sizes["kv_head"]) if result.sizes["kv_head"] > 1 else np.zeros(1)
        for ax, off in zip(axes[0], offsets):
            acc = result["accuracy"].sel(offset=off).values  # (layer, head)
            ax.scatter((layers[:, None] + jitter[None, :]).ravel(), acc.ravel(), s=8, alpha=0.45, color=BASELINE_COLORS[0], label="head")
            ax.plot(layers, np.nanmean(acc, 1), color=MAIN_COLOR, label="layer mean")
            ax.axhline(result.attrs["majority"], color="gray", linestyle="--", linewidth=1, label="majority class")
            ax.set_title(f"offset {off:+d}")
            ax.set_xlabel("layer")
            ax.set_ylim(-0.02, 1.02)
        axes[0][0].set_ylabel("probe accuracy (held-out prompts)")
        axes[0][-1].legend(loc="lower right")
        fig.suptitle(title)
    save_figure(fig, path)


def probe_figure(store, png_keys, png_values, csv, *, alpha=0.01, test_fraction=0.2, seed=0, keys="keys", title=""):
    """Fig 5a (keys -> top token of x_i alone) and Fig 5b (values -> y_i), plus the CSV of every accuracy."""
    ds = open_store(store, needs=[keys, "values", "demo_top_token", "demo_label"])
    frames = []
    for variable, png, label in [
        (keys, png_keys, "(a) keys → argmax_o P(o|x_i)"),
        ("values", png_values, "(b) values → y_i"),
    ]:
        result = probe_accuracy(ds, variable, alpha, test_fraction, seed)
        info = result.attrs
        plot_probe(
            result,
            png,
            f"{title}\n{label}: ridge λ={alpha}, {info['n_train']} train / {info['n_test']} test demonstrations, "
            f"{info['n_classes']} classes",
        )
        frame = result.to_dataframe().reset_index()
        for key in ("variable", "target", "majority", "n_train", "n_test", "n_classes"):
            frame[key] = info[key]
        frames.append(frame)
    pd.concat(frames).to_csv(csv, index=False, float_format="%.6g")
    return frames
