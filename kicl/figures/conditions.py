"""The ablation stage's figures, and its one entry point ``write_condition_outputs`` (numbers, tables, figures).

``conditions.png``: per condition the ICL accuracy and the paired difference to the reference (intervals), a
bandwidth panel (accuracy and the reference-chosen head's reconstruction against the mean demonstration
similarity) and a label-noise panel (accuracy, ŷ = majority shown label and reconstruction against the
measured share of wrong shown labels). ``heads.png``: Fig 3-style per-head agreement of ỹ with ŷ for chosen
conditions side by side. Every figure writes the CSV of the numbers it shows.
"""

from __future__ import annotations

from dataclasses import astuple
from pathlib import Path

import numpy as np
import pandas as pd

from kicl.analysis.conditions import ConditionResults, compare_conditions
from kicl.figures.heatmaps import head_heatmaps
from kicl.figures.style import BASELINE_COLORS, MAIN_COLOR, figure_style, plt, save_figure
from kicl.fileio import write_csv_atomic
from kicl.store.heads import HeadId
from kicl.tables.conditions import TABLE_FILES, write_condition_tables

FIGURE_FILES = {"png": "conditions.png", "figure_csv": "conditions_figure.csv", "heads_png": "heads.png"}
FIGURE_FILES["heads_csv"] = "heads.csv"
#: every file write_condition_outputs writes, by key
OUTPUT_FILES = TABLE_FILES | FIGURE_FILES

SERIES = {
    "accuracy": (MAIN_COLOR, "o", "ICL accuracy"),
    "head_ref_agreement": (BASELINE_COLORS[0], "s", "reference-chosen head: ỹ = ŷ (held-out)"),
    "majority_shown_agreement": (BASELINE_COLORS[1], "^", "ŷ = majority shown label"),
}


def output_paths(out_dir) -> dict:
    """key -> path of every output file under `out_dir` (results/ablation/{model}/{task})."""
    return {key: Path(out_dir) / name for key, name in OUTPUT_FILES.items()}


def _points(frame: pd.DataFrame, panel: str, x: str | None, ys) -> list[dict]:
    rows = []
    for _, r in frame.iterrows():
        for y in ys:
            rows.append(
                {
                    "panel": panel,
                    "condition": r["condition"],
                    "x_name": x or "condition",
                    "x": r[x] if x else np.nan,
                    "x_low": r[f"{x}_low"] if x else np.nan,
                    "x_high": r[f"{x}_high"] if x else np.nan,
                    "series": y,
                    "y": r[y],
                    "y_low": r[f"{y}_low"],
                    "y_high": r[f"{y}_high"],
                }
            )
    return rows


def figure_frame(results: ConditionResults) -> pd.DataFrame:
    """The numbers conditions.png shows, one row per (panel, condition, series)."""
    m = results.metrics
    rows = _points(m, "accuracy", None, ["accuracy"])
    rows += _points(m, "difference", None, ["accuracy_diff"])
    rows += _points(results.bandwidth, "bandwidth", "mean_demo_similarity", ["accuracy", "head_ref_agreement"])
    noise_ys = ["accuracy", "majority_shown_agreement", "head_ref_agreement"]
    rows += _points(results.label_noise, "label_noise", "wrong_label_share", noise_ys)
    frame = pd.DataFrame(rows)
    frame.insert(0, "task", results.task)
    return frame


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


def draw_conditions(results: ConditionResults, png, csv, title: str = "") -> pd.DataFrame:
    """conditions.png and its CSV."""
    frame = figure_frame(results)
    write_csv_atomic(frame, csv, index=False, float_format="%.6g")
    n = len(results.metrics)
    level = int(round(100 * results.level))
    with figure_style():
        fig, axes = plt.subplots(1, 4, figsize=(15, max(3.0, 0.3 * n + 1.5)), squeeze=False)
        axes = axes[0]
        _bars(axes[0], frame[frame.panel == "accuracy"], "ICL accuracy", None)
        _bars(
            axes[1],
            frame[frame.panel == "difference"],
            f"Δ accuracy − {results.reference} (paired)",
            0.0,
            skip=results.reference,
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
            f"{title or results.task}: conditions against '{results.reference}'; {level}% paired bootstrap intervals "
            f"({results.n_boot} resamples of test points)",
            fontsize=9,
        )
        fig.tight_layout()
    save_figure(fig, png)
    return frame


def draw_head_grids(results: ConditionResults, png, csv, conditions=None, title: str = "") -> pd.DataFrame:
    """Fig 3-style heat-maps (agreement of ỹ with ŷ per layer × head) of `conditions` (default: all, reference
    first) side by side, on a shared 0..1 colour scale; the best head of each panel is boxed, the head chosen on
    the reference's select prompts dotted. `csv` gets the numbers shown."""
    names = list(results.metrics["condition"])
    chosen = list(conditions) if conditions else [results.reference] + [n for n in names if n != results.reference]
    unknown = [c for c in chosen if c not in names]
    if unknown:
        raise ValueError(f"ablation heat-map conditions {unknown} are not among the conditions {names}")
    heads = results.heads[results.heads["condition"].isin(chosen)]
    write_csv_atomic(heads, csv, index=False, float_format="%.6g")
    layer, head = astuple(HeadId.parse(results.metrics["head_ref"].iloc[0]))
    grids, notes, marks = {}, {}, {}
    for name in chosen:
        sub = heads[heads["condition"] == name]
        grid = np.full((sub["layer"].max() + 1, sub["head"].max() + 1), np.nan)
        grid[sub["layer"], sub["head"]] = sub["agreement"]
        grids[name] = grid
        marks[name] = np.zeros(grid.shape, dtype=bool)
        marks[name][layer, head] = True
        notes[name] = f"n = {int(sub['n'].iloc[0])} prompts; dot: {HeadId(layer, head)} = {grid[layer, head]:.3f}"
    head_heatmaps(
        grids,
        png,
        title or f"{results.task}: agreement of each head's ỹ with ŷ, per condition",
        "agreement of ỹ with ŷ",
        vmin=0.0,
        vmax=1.0,
        marks=marks,
        notes=notes,
    )
    return heads


def write_condition_outputs(
    stores: dict,
    prompts: dict,
    protocols: dict,
    reference: str,
    task: str,
    out_dir,
    *,
    kr_csvs: dict | None = None,
    embeddings: dict | None = None,
    bootstrap: dict | None = None,
    model: str = "",
    pooling: str = "max",
    ties: str = "lowest",
    points: str = "all",
    heatmap_conditions=None,
    heatmap_splits=("select", "heldout"),
    aliases: dict | None = None,
) -> dict:
    """The whole ablation stage of one (model, task): numbers (kicl.analysis.conditions.compare_conditions),
    tables and figures under `out_dir`. Returns key -> path of every file written (OUTPUT_FILES)."""
    results = compare_conditions(
        stores,
        prompts,
        protocols,
        reference,
        task,
        kr_csvs=kr_csvs,
        embeddings=embeddings,
        bootstrap=bootstrap,
        pooling=pooling,
        ties=ties,
        points=points,
        heatmap_splits=heatmap_splits,
        aliases=aliases,
    )
    paths = output_paths(out_dir)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    write_condition_tables(results, paths, model)
    title = f"{model} on {task}" if model else task
    draw_conditions(results, paths["png"], paths["figure_csv"], title)
    draw_head_grids(results, paths["heads_png"], paths["heads_csv"], heatmap_conditions, title)
    return paths
