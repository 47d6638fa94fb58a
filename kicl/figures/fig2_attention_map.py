"""Fig 2 / Fig 25 drawing: the aligned last-token attention map (numbers from kicl.analysis.attention_map).

Layers are bands separated by white lines, heads thin lines within a band; label-token columns are marked.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from matplotlib import colors

from kicl.analysis.attention_map import AttentionMap, aligned_attention_map
from kicl.figures.style import figure_style, plt, save_figure
from kicl.store.reader import open_store, split_mask


def _norm(values, color_scale: str, vmax_quantile: float):
    finite = values[np.isfinite(values)]
    vmax = float(np.quantile(finite, vmax_quantile)) if finite.size else 1.0
    if color_scale == "linear":
        return colors.Normalize(vmin=0.0, vmax=vmax)
    if color_scale == "sqrt":
        return colors.PowerNorm(gamma=0.5, vmin=0.0, vmax=vmax)
    if color_scale == "log":
        positive = finite[finite > 0]
        vmin = float(np.quantile(positive, 0.01)) if positive.size else 1e-6
        return colors.LogNorm(vmin=vmin, vmax=max(vmax, vmin * 10))
    raise ValueError(f"analysis.attention_map.color_scale must be linear, sqrt or log, got {color_scale!r}")


def plot_attention_map(amap: AttentionMap, path, title: str, color_scale: str = "sqrt", vmax_quantile: float = 0.995):
    """Layers as bands (separated by white lines), heads as thin lines within a band; label columns marked."""
    with figure_style():
        fig, ax = _draw_map(amap, title, color_scale, vmax_quantile)
    save_figure(fig, path)


def _draw_map(amap, title, color_scale, vmax_quantile):
    n_layers, n_heads, n_cols = amap.values.shape
    image = amap.values.reshape(n_layers * n_heads, n_cols)
    fig, ax = plt.subplots(
        figsize=(float(np.clip(n_cols / 22, 8, 22)), float(np.clip(n_layers * n_heads / 28, 3, 14)) + 1.4)
    )
    im = ax.imshow(
        image, aspect="auto", interpolation="nearest", cmap="viridis", norm=_norm(image, color_scale, vmax_quantile)
    )
    for lay in range(1, n_layers):
        ax.axhline(lay * n_heads - 0.5, color="white", linewidth=0.8)
    step = max(1, int(np.ceil(n_layers / 30)))
    ax.set_yticks([lay * n_heads + (n_heads - 1) / 2 for lay in range(0, n_layers, step)])
    ax.set_yticklabels([str(lay) for lay in range(0, n_layers, step)])
    ax.set_ylabel(f"layer (band of {n_heads} heads)")
    segs = np.array(amap.column_segment)
    ticks, labels = [], []
    for name in dict.fromkeys(amap.column_segment):
        idx = np.flatnonzero(segs == name)
        kind = amap.column_kind[idx[0]]
        if kind in ("input", "test", "label"):
            ticks.append(idx.mean())
            labels.append(name)
    ax.set_xticks(ticks)
    ax.set_xticklabels(labels, rotation=90, fontsize=7)
    label_cols = [j for j, k in enumerate(amap.column_kind) if k == "label"]
    ax.scatter(
        label_cols, [-1.5] * len(label_cols), marker="v", s=12, color="crimson", clip_on=False, label="label token y_i"
    )
    ax.set_ylim(n_layers * n_heads - 0.5, -0.5)
    how = "tokens as-is" if amap.rescale_len is None else f"x_i and x_test rescaled to {amap.rescale_len} ({amap.mode})"
    ax.set_xlabel(f"aligned prompt position ({how}); ▼ = label token")
    ax.set_title(title, fontsize=10, pad=14)
    fig.colorbar(im, ax=ax, fraction=0.02, pad=0.01, label=f"attention ({color_scale} scale)")
    ax.grid(False)
    return fig, ax


@dataclass(frozen=True)
class AttentionMapOptions:
    """Fig 2's map: the aligned layout (``rescale_len`` points per segment, ``mode``), the test points averaged
    (``splits``), the colour scale and its upper quantile, and prompts per batch."""

    rescale_len: int | None = 30
    mode: str = "values"
    splits: tuple = ("select", "heldout")
    color_scale: str = "sqrt"
    vmax_quantile: float = 0.995
    batch_size: int = 32


def attention_map_figure(store, png, csv, options: AttentionMapOptions | None = None, *, prompt=None, title=""):
    """Fig 2 (all prompts of `splits`, averaged) or Fig 25 (`prompt` = one row, no averaging): PNG + CSV."""
    o = options or AttentionMapOptions()
    splits = o.splits
    ds = open_store(store, needs=["attention", "length", "split", "input_start", "label_pos", "test_start"])
    if prompt is None:
        prompts = np.flatnonzero(split_mask(ds, splits))
        what = f"averaged over {len(prompts)} test points ({'+'.join(splits)})"
    else:
        n = ds.sizes["prompt"]
        if not 0 <= prompt < n:
            raise ValueError(f"analysis.single_prompt.prompt = {prompt} but {store} has prompts 0..{n - 1}")
        prompts = np.array([prompt])
        gold, pred = int(ds["gold"].values[prompt]), int(ds["prediction"].values[prompt])
        what = f"prompt {prompt} ({ds['split'].values[prompt]}, gold {gold}, prediction {pred}), no averaging"
    amap = aligned_attention_map(ds, prompts, o.rescale_len, o.mode, o.batch_size)
    amap.to_frame().to_csv(csv, index=False, float_format="%.6g")
    plot_attention_map(amap, png, f"{title}\nlast-token attention, {what}", o.color_scale, o.vmax_quantile)
    return amap
