"""Table 3 drawn: distance and accuracy vs n, ours with s.d. error bars beside the paper's points, and its CSV."""

from __future__ import annotations

import os

import pandas as pd

from kicl.figures.style import (
    BASELINE_ALPHA,
    BASELINE_COLORS,
    MAIN_COLOR,
    REFERENCE_COLOR,
    figure_style,
    log2_axis,
    save_figure,
    subplots,
)
from kicl.fileio import atomic_path
from kicl.theory.table3 import MAIN_METHOD, METHOD_LABELS, PANELS, figure_data


def plot_table3(data: pd.DataFrame):
    """Distance and accuracy vs n (log x): ours with s.d. error bars, the paper's points, baselines lighter."""
    figure, axes = subplots(ncols=len(PANELS), panel_size=(4.6, 3.4))
    ns = sorted(data.loc[data["series"] != "paper", "n"].unique())
    baselines = [s for s in data["series"].unique() if s not in (MAIN_METHOD, "paper")]
    for axis, (panel, _, y_label) in zip(axes[0], PANELS):
        panel_data = data[data["panel"] == panel]
        for color, series in zip(BASELINE_COLORS, baselines):
            points = panel_data[panel_data["series"] == series]
            axis.errorbar(
                points["n"],
                points["value"],
                yerr=points["sd"],
                color=color,
                alpha=BASELINE_ALPHA,
                linewidth=1,
                label=METHOD_LABELS.get(series, series),
            )
        ours = panel_data[panel_data["series"] == MAIN_METHOD]
        axis.errorbar(
            ours["n"],
            ours["value"],
            yerr=ours["sd"],
            color=MAIN_COLOR,
            marker="o",
            linewidth=2,
            label=METHOD_LABELS[MAIN_METHOD] + " (ours)",
            zorder=3,
        )
        paper = panel_data[(panel_data["series"] == "paper") & panel_data["n"].isin(ns)]
        axis.plot(
            paper["n"],
            paper["value"],
            color=REFERENCE_COLOR,
            marker="x",
            linestyle="--",
            linewidth=1,
            markersize=6,
            label="paper, Table 3",
            zorder=4,
        )
        log2_axis(axis, ns)
        axis.set_xlabel("number of demonstrations n")
        axis.set_ylabel(y_label)
    axes[0, 0].set_ylim(bottom=0)
    axes[0, 1].set_ylim(0, 1.02)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    figure.legend(handles[::-1], labels[::-1], loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=3)
    figure.suptitle("Table 3: kernel regression vs the Bayesian posterior (mean ± s.d. over HMMs)", fontsize=10)
    return figure


def write_table3_figure(
    table_csv: str | os.PathLike, figure_path: str | os.PathLike, figure_csv: str | os.PathLike
) -> None:
    """Write the Table 3 figure and the CSV of exactly the numbers it shows."""
    data = figure_data(pd.read_csv(table_csv))
    with atomic_path(figure_csv) as temporary:
        data.to_csv(temporary, index=False, float_format="%.10g")
    with figure_style():
        save_figure(plot_table3(data), figure_path)
