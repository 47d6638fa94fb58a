"""Figures of the trained-transformer check of Theorem 1: the training loss and the comparison against n."""

from __future__ import annotations

import pandas as pd

from kicl.figures.style import BASELINE_COLORS, MAIN_COLOR, REFERENCE_COLOR, figure_style, save_figure, subplots
from kicl.fileio import write_csv_atomic

#: method -> (label, colour, line style); the transformer is the main result, the exact posterior the reference
STYLES = {
    "transformer": ("transformer (ICL)", MAIN_COLOR, "-"),
    "exact_posterior": ("exact posterior (Bayes)", REFERENCE_COLOR, "-"),
    "task_known": ("task known (ceiling)", REFERENCE_COLOR, ":"),
    "kernel_regression": ("Eq. 6 kernel regression", BASELINE_COLORS[1], "--"),
    "head_vote": ("selected head's vote", BASELINE_COLORS[2], "-."),
    "label_frequency": ("label frequency / majority", BASELINE_COLORS[0], "--"),
    "last_demo_label": ("last demo's label", BASELINE_COLORS[3], ":"),
}


def plot_training_loss(loss_csv, figure_path, data_csv) -> pd.DataFrame:
    """Mean next-token loss per logging window against tokens seen; writes the plotted data as CSV."""
    curve = pd.read_csv(loss_csv)
    with figure_style():
        figure, axes = subplots(1)
        axis = axes[0, 0]
        axis.plot(curve["tokens"], curve["loss"], color=MAIN_COLOR)
        axis.set_xlabel("training tokens")
        axis.set_ylabel("next-token loss (nats)")
        axis.set_title("Pre-training on the label world")
    save_figure(figure, figure_path)
    data = curve[["step", "tokens", "loss"]]
    write_csv_atomic(data, data_csv)
    return data


def plot_comparison(table_csv, figure_path, data_csv) -> pd.DataFrame:
    """Accuracy against sampled labels, agreement with the exact posterior and L1 to it, against n.

    n = 0 sits at the left edge of a symlog axis; methods without a distribution have no L1 curve.
    """
    table = pd.read_csv(table_csv)
    panels = [("acc_sampled", "accuracy vs sampled label"), ("agree_posterior", "agreement with posterior argmax"),
              ("l1_posterior", "L1 to exact posterior")]  # fmt: skip
    ns = sorted(table["n"].unique())
    with figure_style():
        figure, axes = subplots(len(panels))
        for axis, (metric, title) in zip(axes[0], panels):
            for method, (label, colour, style) in STYLES.items():
                rows = table[table["method"] == method].dropna(subset=[metric]).sort_values("n")
                if rows.empty:
                    continue
                axis.plot(rows["n"], rows[metric], style, marker="o", color=colour, label=label)
            axis.set_xscale("symlog", base=2, linthresh=1)
            axis.set_xticks(ns)
            axis.set_xticklabels([str(n) for n in ns])
            axis.set_xlabel("demonstrations n")
            axis.set_title(title)
        axes[0, 0].legend(loc="best")
    save_figure(figure, figure_path)
    data = table[["n", "method"] + [metric for metric, _ in panels]]
    write_csv_atomic(data, data_csv)
    return data
