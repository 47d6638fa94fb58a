"""Per-head heat-maps (layers on x, heads on y), one panel per kernel-weight pooling (Figs 3 and 4)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kicl.figures.style import figure_style, plt, save_figure
from kicl.store.heads import HeadId


@dataclass(frozen=True)
class ColorScale:
    """The colour map of the heat-maps and its limits (None: the smallest / largest finite value of all panels)."""

    vmin: float | None = None
    vmax: float | None = None
    cmap: str = "viridis"


def head_heatmaps(grids: dict, path, title: str, colorbar_label: str, *, scale=ColorScale(), marks=None, notes=None):
    """One panel per entry of `grids` (name -> array (layer, head)); the best head of each panel is boxed.

    `scale`: the colour map and its limits. `marks` (name -> boolean (layer, head)) puts a dot on the marked heads
    (e.g. above a null threshold); `notes` (name -> str) adds a second line to a panel's title.
    """
    marks, notes = marks or {}, notes or {}
    names = list(grids)
    n_layers, n_heads = next(iter(grids.values())).shape
    ncols = min(2, len(names))
    nrows = int(np.ceil(len(names) / ncols))
    width = float(np.clip(n_layers * 0.22, 3.0, 8.0))
    height = float(np.clip(n_heads * 0.22, 2.0, 8.0)) + 0.7
    with figure_style():
        fig, axes = plt.subplots(
            nrows, ncols, figsize=(width * ncols + 1.2, height * nrows + 0.8), squeeze=False, layout="constrained"
        )
        for ax in axes.ravel()[len(names) :]:
            ax.remove()
        finite = np.concatenate([g[np.isfinite(g)].ravel() for g in grids.values()] + [np.array([0.0])])
        vmin = float(finite.min()) if scale.vmin is None else scale.vmin
        vmax = float(finite.max()) if scale.vmax is None else scale.vmax
        panels = axes.ravel()[: len(names)]
        for ax, name in zip(panels, names):
            grid = np.asarray(grids[name], dtype=float)
            im = ax.imshow(
                grid.T, origin="lower", aspect="auto", cmap=scale.cmap, vmin=vmin, vmax=vmax, interpolation="nearest"
            )
            ax.set_xlabel("layer index")
            ax.set_ylabel("head index")
            if np.isfinite(grid).any():
                lay, head = np.unravel_index(np.nanargmax(grid), grid.shape)
                ax.add_patch(plt.Rectangle((lay - 0.5, head - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1.5))
                heading = f"{name}: best {HeadId(lay, head)} = {grid[lay, head]:.3f}"
            else:
                heading = name
            if name in marks and np.any(marks[name]):
                lays, heads = np.nonzero(np.asarray(marks[name]))
                ax.scatter(lays, heads, s=6, color="black", marker="o", linewidths=0)
            ax.set_title(heading + (f"\n{notes[name]}" if name in notes else ""), fontsize=9)
        fig.colorbar(im, ax=list(panels), fraction=0.03, pad=0.01, aspect=30, label=colorbar_label)
        fig.suptitle(title, fontsize=10)
        for ax in panels:
            ax.grid(False)
    save_figure(fig, path)
