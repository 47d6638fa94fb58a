"""Table 3 outputs: the paper's published numbers beside ours, as a Markdown table and as a figure + CSV."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from kicl.fileio import atomic_path, write_text_atomic
from kicl.plotting import BASELINE_ALPHA, BASELINE_COLORS, MAIN_COLOR, REFERENCE_COLOR, log2_axis, save_figure
from kicl.plotting import figure_style, subplots

#: Han et al. (arXiv 2305.12766), Table 3: L1 distance and accuracy of kernel regression vs the posterior
PAPER_TABLE3 = pd.DataFrame(
    {
        "n": [1, 2, 4, 8, 16, 32, 64, 128],
        "distance": [1.322, 0.942, 0.519, 0.218, 0.163, 0.085, 0.093, 0.083],
        "accuracy": [0.337, 0.532, 0.745, 0.901, 0.926, 0.968, 0.961, 0.964],
    }
)

METHOD_LABELS = {
    "kernel_regression": "kernel regression (Eq. 6, clip)",
    "nadaraya_watson": "Nadaraya-Watson, same kernel",
    "nw_linear": "Nadaraya-Watson, linear kernel (A = I)",
    "label_frequency": "label frequency",
    "oracle": "oracle (task θ* known)",
}
MAIN_METHOD = "kernel_regression"
#: the figure's panels: (panel name, metric column, y label)
PANELS = (
    ("distance", "l1", "L1 distance to P(y | o_ICL)"),
    ("accuracy", "acc_posterior", "accuracy (argmax = posterior argmax)"),
)


def _paper_value(metric: str, n: int) -> float:
    match = PAPER_TABLE3.loc[PAPER_TABLE3["n"] == n, metric]
    return float(match.iloc[0]) if len(match) else float("nan")


def _cell(mean: float, sd: float | None = None) -> str:
    if not np.isfinite(mean):
        return "–"
    return f"{mean:.3f}" if sd is None or not np.isfinite(sd) else f"{mean:.3f} ± {sd:.3f}"


def table3_markdown(summary: pd.DataFrame) -> str:
    """Markdown: the paper's Table 3 rows beside ours (mean ± s.d. over HMMs), then every method."""
    main = summary[summary["method"] == MAIN_METHOD].sort_values("n")
    ns = main["n"].tolist()
    n_hmms, n_prompts = int(main["n_hmms"].iloc[0]), int(main["n_prompts"].iloc[0])

    def row(label: str, cells: list[str]) -> str:
        return "| " + " | ".join([label, *cells]) + " |"

    header = [row("n", [str(n) for n in ns]), row("---", ["---:"] * len(ns))]
    lines = [
        "# Table 3: kernel regression vs the exact Bayesian posterior (synthetic mixture-of-HMM tasks)",
        "",
        f"Ours: mean ± s.d. over {n_hmms} random HMMs of the per-HMM average over {n_prompts} ICL prompts.",
        "Paper: Han et al., arXiv 2305.12766, Table 3.",
        "",
        *header,
        row("paper distance", [_cell(_paper_value("distance", n)) for n in ns]),
        row("**ours distance (L1)**", [_cell(m, s) for m, s in zip(main["l1_mean"], main["l1_sd"])]),
        row("paper accuracy", [_cell(_paper_value("accuracy", n)) for n in ns]),
        row("**ours accuracy** (vs posterior argmax)",
            [_cell(m, s) for m, s in zip(main["acc_posterior_mean"], main["acc_posterior_sd"])]),
        row("ours accuracy vs sampled y_test",
            [_cell(m, s) for m, s in zip(main["acc_sampled_mean"], main["acc_sampled_sd"])]),
        "",
        "## All methods (mean over HMMs)",
        "",
    ]
    for metric, title in (("l1", "L1 distance"), ("l2", "L2 distance"), ("acc_posterior", "accuracy vs posterior argmax"),
                          ("acc_sampled", "accuracy vs sampled y_test")):
        lines += [f"### {title}", "", *header]
        for method, frame in summary.groupby("method", sort=False):
            values = frame.set_index("n")[f"{metric}_mean"]
            lines.append(row(METHOD_LABELS.get(method, method), [_cell(values.get(n, np.nan)) for n in ns]))
        lines.append("")
    return "\n".join(lines)


def write_table3_markdown(table_csv: str | os.PathLike, markdown_path: str | os.PathLike) -> None:
    """Write the Markdown table of ``table_csv`` (the summary written by ``kicl.theory.write_table3``)."""
    write_text_atomic(markdown_path, table3_markdown(pd.read_csv(table_csv)))


def figure_data(summary: pd.DataFrame) -> pd.DataFrame:
    """The numbers behind the figure, long format: panel, series, n, value, sd (NaN for the paper)."""
    frames = []
    for panel, metric, _ in PANELS:
        frames.append(pd.DataFrame({"panel": panel, "series": summary["method"], "n": summary["n"],
                                    "value": summary[f"{metric}_mean"], "sd": summary[f"{metric}_sd"]}))
        frames.append(pd.DataFrame({"panel": panel, "series": "paper", "n": PAPER_TABLE3["n"],
                                    "value": PAPER_TABLE3[panel], "sd": np.nan}))
    return pd.concat(frames, ignore_index=True)


def plot_table3(data: pd.DataFrame):
    """Distance and accuracy vs n (log x): ours with s.d. error bars, the paper's points, baselines lighter."""
    figure, axes = subplots(ncols=len(PANELS), panel_size=(4.6, 3.4))
    ns = sorted(data.loc[data["series"] != "paper", "n"].unique())
    baselines = [s for s in data["series"].unique() if s not in (MAIN_METHOD, "paper")]
    for axis, (panel, _, y_label) in zip(axes[0], PANELS):
        panel_data = data[data["panel"] == panel]
        for color, series in zip(BASELINE_COLORS, baselines):
            points = panel_data[panel_data["series"] == series]
            axis.errorbar(points["n"], points["value"], yerr=points["sd"], color=color, alpha=BASELINE_ALPHA,
                          linewidth=1, label=METHOD_LABELS.get(series, series))
        ours = panel_data[panel_data["series"] == MAIN_METHOD]
        axis.errorbar(ours["n"], ours["value"], yerr=ours["sd"], color=MAIN_COLOR, marker="o", linewidth=2,
                      label=METHOD_LABELS[MAIN_METHOD] + " (ours)", zorder=3)
        paper = panel_data[(panel_data["series"] == "paper") & panel_data["n"].isin(ns)]
        axis.plot(paper["n"], paper["value"], color=REFERENCE_COLOR, marker="x", linestyle="--", linewidth=1,
                  markersize=6, label="paper, Table 3", zorder=4)
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
        data.to_csv(temporary, index=False, float_format="%.6g")
    with figure_style():
        save_figure(plot_table3(data), figure_path)
