"""Fig 3a (ỹ vs ŷ) and 3b (ỹ vs gold): per-head heat-maps with the attention-free baseline and the null visible.

The colour scale is diverging around the best attention-free baseline (`color_center="best_baseline"`):
heads at the baseline are white, better ones red, worse ones blue. Heads above the position-keeping null
(family-wise over poolings × heads; kicl.analysis.reconstruction) are dotted, the best head is boxed; each
panel's title gives the best head, its position-null threshold and family-wise p, and, as a secondary number,
the label-permutation null's p. The numbers come from kicl.analysis.reconstruction.reconstruction_scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from matplotlib import colors

from kicl.analysis.baselines import BASELINE_LABELS
from kicl.analysis.reconstruction import NullOptions, reconstruction_frame, reconstruction_scores
from kicl.figures.style import figure_style, plt, save_figure
from kicl.store.heads import HeadId
from kicl.store.reader import open_store, poolings, split_mask

CENTERS = ("best_baseline", "none")


def _norm(center: str, level: float):
    if center == "none":
        return colors.Normalize(vmin=0.0, vmax=1.0), "viridis"
    if center != "best_baseline":
        raise ValueError(f"analysis.reconstruction_color_center must be one of {CENTERS}, got {center!r}")
    level = float(np.clip(level, 0.01, 0.99))
    return colors.TwoSlopeNorm(vmin=0.0, vcenter=level, vmax=1.0), "RdBu_r"


def draw_reconstruction(scores, var: str, path, title: str, color_center: str = "best_baseline") -> None:
    """One panel per pooling of scores[var] (layer × head)."""
    pools = [str(p) for p in scores["pooling"].values]
    base = dict(zip(scores["baseline"].values, scores[f"baseline_{var}"].values))
    best_name = max(base, key=base.get)
    norm, cmap = _norm(color_center, base[best_name])
    n_layers, n_heads = scores.sizes["layer"], scores.sizes["head"]
    ncols = min(2, len(pools))
    nrows = int(np.ceil(len(pools) / ncols))
    width = float(np.clip(n_layers * 0.22, 3.0, 8.0))
    height = float(np.clip(n_heads * 0.22, 2.0, 8.0)) + 0.9
    with figure_style():
        fig, axes = plt.subplots(
            nrows, ncols, figsize=(width * ncols + 1.6, height * nrows + 1.2), squeeze=False, layout="constrained"
        )
        for ax in axes.ravel()[len(pools) :]:
            ax.remove()
        panels = axes.ravel()[: len(pools)]
        for ax, pool in zip(panels, pools):
            grid = scores[var].sel(pooling=pool).values
            label_p = float(scores[f"{var}_label_p_value"].sel(pooling=pool))
            im = ax.imshow(grid.T, origin="lower", aspect="auto", cmap=cmap, norm=norm, interpolation="nearest")
            above = np.argwhere(scores[f"{var}_above_null"].sel(pooling=pool).values)
            if len(above):
                ax.scatter(above[:, 0], above[:, 1], s=6, color="black", marker="o", label="above null")
            lay, head = np.unravel_index(np.argmax(grid), grid.shape)
            threshold = float(scores[f"{var}_position_threshold"].sel(pooling=pool).values[lay, head])
            p_value = float(scores[f"{var}_position_p"].sel(pooling=pool).values[lay, head])
            ax.add_patch(plt.Rectangle((lay - 0.5, head - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=1.6))
            ax.set_title(
                f"{pool}: best {HeadId(lay, head)} = {grid[lay, head]:.3f}; {len(above)} heads above\n"
                f"position null: threshold {threshold:.3f}, p = {p_value:.3f}; label null p = {label_p:.3f}",
                fontsize=8,
            )
            ax.set_xlabel("layer index")
            ax.set_ylabel("head index")
            ax.grid(False)
        bar = fig.colorbar(im, ax=list(panels), fraction=0.03, pad=0.01, aspect=30, label="share of prompts")
        for name, value in base.items():
            bar.ax.axhline(value, color="black", linewidth=0.6, linestyle=":" if name != best_name else "-")
        fig.suptitle(
            f"{title}\nwhite = best attention-free baseline: {BASELINE_LABELS[best_name]} = "
            f"{base[best_name]:.3f} (line on the colour bar; dotted: other baselines)\n"
            f"• = family-wise p ≤ {1 - scores.attrs['quantile']:.2g} under the position-keeping null (kernel-weight "
            f"vectors permuted among prompts with the same number of demonstrations, {scores.attrs['n_permutations']}"
            f" permutations, studentised max over poolings × heads)",
            fontsize=8,
        )
    save_figure(fig, path)


@dataclass(frozen=True)
class ReconstructionOptions:
    """Fig 3: the poolings and test points drawn, prompts per batch, the vote-tie rule, the colour centre and the
    permutation nulls behind the marks."""

    pools: tuple = ()
    splits: tuple = ("select", "heldout")
    batch_size: int = 256
    ties: str = "lowest"
    color_center: str = "best_baseline"
    null: NullOptions = NullOptions()


def reconstruction_figure(
    store, png_pred, png_gold, csv, options: ReconstructionOptions | None = None, *, title: str = ""
):
    """Fig 3a and 3b, plus the CSV of every number drawn (kicl.analysis.reconstruction.reconstruction_frame)."""
    o = options or ReconstructionOptions()
    _norm(o.color_center, 0.5)  # bad option -> error before any work
    ds = open_store(store, needs=["kernel_weight", "demo_label", "prediction", "gold", "split"])
    pools = poolings(ds, o.pools)
    splits = o.splits
    prompts = np.flatnonzero(split_mask(ds, splits))
    scores = reconstruction_scores(ds, prompts, pools, batch_size=o.batch_size, ties=o.ties, null=o.null)
    reconstruction_frame(scores).to_csv(csv, index=False, float_format="%.6g")
    what = f"{scores.attrs['n_prompts']} prompts ({'+'.join(splits)})"
    for var, path, label in [
        ("agree_pred", png_pred, "(a) agreement of ỹ with the ICL prediction ŷ"),
        ("acc_gold", png_gold, "(b) accuracy of ỹ against the gold label"),
    ]:
        draw_reconstruction(scores, var, path, f"{title}\n{label}, {what}", o.color_center)
    return scores
