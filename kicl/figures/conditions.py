"""The conditions stage's figures (rule ``conditions_figures``, render only), drawn from the numbers CSVs
(kicl.analysis.conditions_stage).

``conditions.png``: per condition the ICL accuracy and the paired difference to the reference (intervals), a
bandwidth panel (accuracy and the reference-chosen head's reconstruction against the mean demonstration
similarity) and a label-noise panel (accuracy, ŷ = majority shown label and reconstruction against the
measured share of wrong shown labels); its points are conditions_figure.csv. ``heads.png``: Fig 3-style per-head
agreement of ỹ with ŷ for chosen conditions side by side; its numbers are heads.csv.
"""

from __future__ import annotations

from dataclasses import astuple

import numpy as np
import pandas as pd

from kicl.analysis.conditions_stage import head_map_conditions, read_numbers_csv
from kicl.figures.heatmaps import ColorScale, head_heatmaps
from kicl.figures.style import BASELINE_COLORS, MAIN_COLOR, figure_style, plt, save_figure
from kicl.store.heads import HeadId

#: the figures' file names in the stage's output folder, by output key
FIGURE_FILES = {"png": "conditions.png", "heads_png": "heads.png"}

SERIES = {
    "accuracy": (MAIN_COLOR, "o", "ICL accuracy"),
    "head_ref_agreement": (BASELINE_COLORS[0], "s", "reference-chosen head: ỹ = ŷ (held-out)"),
    "majority_shown_agreement": (BASELINE_COLORS[1], "^", "ŷ = majority shown label"),
}


def _bars(ax, part: pd.DataFrame, label: str, zero: float | None, skip: str | None = None) -> None:
    y = np.arange(len(part))[::-1]
    shown = (part["condition"] != skip).to_numpy()
    ax.errorbar(
        part["y"][shown],
        y[shown],
        xerr=[(part["y"] - part["y_low"])[shown], (part["y_high"] - part["y"])[shown]],
        fmt="o",
        color=MAIN_COLOR,
    )
    ax.set_yticks(y)
    ax.set_yticklabels(part["condition"])
    ax.set_xlabel(label)
    if zero is not None:
        ax.axvline(zero, color="black", lw=0.8, ls="--")


def _curve(ax, part: pd.DataFrame, xlabel: str, empty: str) -> None:
    if part.empty:
        ax.text(0.5, 0.5, empty, ha="center", va="center", transform=ax.transAxes, fontsize=8, wrap=True)
        ax.set_xlabel(xlabel)
        return
    for series, sub in part.groupby("series", sort=False):
        color, marker, label = SERIES[series]
        sub = sub.sort_values("x")
        ax.errorbar(
            sub["x"],
            sub["y"],
            xerr=[sub["x"] - sub["x_low"], sub["x_high"] - sub["x"]],
            yerr=[sub["y"] - sub["y_low"], sub["y_high"] - sub["y"]],
            fmt=f"{marker}-",
            color=color,
            label=label,
        )
        if series == "accuracy":
            for _, r in sub.iterrows():
                ax.annotate(r["condition"], (r["x"], r["y"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(xlabel)
    ax.set_ylim(-0.02, 1.02)
    ax.legend(loc="best")


def draw_conditions(frame: pd.DataFrame, png, reference: str, bootstrap: dict, title: str) -> None:
    """conditions.png from its points (conditions_figure.csv); `bootstrap`: config analysis.bootstrap."""
    n = int((frame["panel"] == "accuracy").sum())
    level = int(round(100 * float(bootstrap["level"])))
    with figure_style():
        fig, axes = plt.subplots(1, 4, figsize=(15, max(3.0, 0.3 * n + 1.5)), squeeze=False)
        axes = axes[0]
        _bars(axes[0], frame[frame.panel == "accuracy"], "ICL accuracy", None)
        _bars(
            axes[1],
            frame[frame.panel == "difference"],
            f"Δ accuracy − {reference} (paired)",
            0.0,
            skip=reference,
        )
        axes[1].set_ylim(axes[0].get_ylim())
        axes[1].set_yticklabels([])
        _curve(
            axes[2],
            frame[frame.panel == "bandwidth"],
            "mean cosine of the demonstrations to the test input",
            "no condition records demo_similarity",
        )
        axes[2].set_title("bandwidth")
        _curve(
            axes[3],
            frame[frame.panel == "label_noise"],
            "measured share of wrong shown labels",
            "no label-noise conditions with measured wrong labels",
        )
        axes[3].set_title("label noise")
        axes[3].set_xlim(-0.05, 1.05)
        fig.suptitle(
            f"{title}: conditions against '{reference}'; {level}% paired bootstrap intervals "
            f"({int(bootstrap['n_boot'])} resamples of test points)",
            fontsize=9,
        )
        fig.tight_layout()
    save_figure(fig, png)


def draw_head_grids(heads: pd.DataFrame, chosen: list[str], reference_head: HeadId, png, title: str) -> None:
    """Fig 3-style heat-maps (agreement of ỹ with ŷ per layer × head, heads.csv) of the conditions `chosen` side
    by side, on a shared 0..1 colour scale; the best head of each panel is boxed, `reference_head` (chosen on the
    reference's select prompts) dotted."""
    layer, head = astuple(reference_head)
    grids, notes, marks = {}, {}, {}
    for name in chosen:
        sub = heads[heads["condition"] == name]
        grid = np.full((sub["layer"].max() + 1, sub["head"].max() + 1), np.nan)
        grid[sub["layer"], sub["head"]] = sub["agreement"]
        grids[name] = grid
        marks[name] = np.zeros(grid.shape, dtype=bool)
        marks[name][layer, head] = True
        notes[name] = f"n = {int(sub['n'].iloc[0])} prompts; dot: {reference_head} = {grid[layer, head]:.3f}"
    head_heatmaps(
        grids,
        png,
        title,
        "agreement of ỹ with ŷ",
        scale=ColorScale(0.0, 1.0),
        marks=marks,
        notes=notes,
    )


def write_condition_figures(numbers: dict, paths: dict, reference: str, bootstrap: dict, head_maps=None) -> None:
    """conditions.png and heads.png (paths: key -> path of FIGURE_FILES) from the numbers CSVs (numbers: key ->
    path of kicl.analysis.conditions_stage.NUMBER_FILES); `head_maps`: config conditions_stage.head_maps."""
    table = read_numbers_csv(numbers["csv"], "csv")
    model = table["model"].iloc[0] if "model" in table else ""
    task = table["task"].iloc[0]
    title = f"{model} on {task}" if model else task
    draw_conditions(read_numbers_csv(numbers["figure_csv"], "figure_csv"), paths["png"], reference, bootstrap, title)
    chosen = head_map_conditions(table["condition"], reference, head_maps)
    heads = read_numbers_csv(numbers["heads_csv"], "heads_csv")
    draw_head_grids(heads, chosen, HeadId.parse(table["head_ref"].iloc[0]), paths["heads_png"], title)
