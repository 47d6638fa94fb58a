"""Table 3 outputs: the paper's published numbers beside ours, as a Markdown table and as a figure + CSV."""

from __future__ import annotations

import html
import os

import numpy as np
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
from kicl.fileio import atomic_path, write_text_atomic

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
METRIC_TITLES = {
    "l1": "L1 distance",
    "l2": "L2 distance",
    "acc_posterior": "accuracy vs posterior argmax",
    "acc_sampled": "accuracy vs sampled y_test",
}
TITLE = "Table 3: kernel regression vs the exact Bayesian posterior (synthetic mixture-of-HMM tasks)"
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


def table3_sections(summary: pd.DataFrame) -> tuple[str, list[tuple[str, pd.DataFrame]]]:
    """A description line and titled tables (rows = labels, columns = n) for the Markdown and HTML outputs.

    The first table puts the paper's Table 3 rows beside ours (mean ± s.d. over HMMs); the next ones give
    every method's mean over HMMs for each metric.
    """
    main = summary[summary["method"] == MAIN_METHOD].sort_values("n")
    ns = main["n"].tolist()
    n_hmms, n_prompts = int(main["n_hmms"].iloc[0]), int(main["n_prompts"].iloc[0])
    description = (
        f"Ours: mean ± s.d. over {n_hmms} random HMMs of the per-HMM average over {n_prompts} ICL prompts. "
        "Paper: Han et al., arXiv 2305.12766, Table 3."
    )

    def ours(metric: str) -> list[str]:
        return [_cell(m, s) for m, s in zip(main[f"{metric}_mean"], main[f"{metric}_sd"])]

    comparison = {
        "paper distance": [_cell(_paper_value("distance", n)) for n in ns],
        "ours distance (L1)": ours("l1"),
        "paper accuracy": [_cell(_paper_value("accuracy", n)) for n in ns],
        "ours accuracy (vs posterior argmax)": ours("acc_posterior"),
        "ours accuracy vs sampled y_test": ours("acc_sampled"),
    }
    sections = [("Paper vs ours (kernel regression, Eq. 6)", pd.DataFrame(comparison, index=ns).T)]
    for metric, title in METRIC_TITLES.items():
        rows = {}
        for method, frame in summary.groupby("method", sort=False):
            values = frame.set_index("n")[f"{metric}_mean"]
            rows[METHOD_LABELS.get(method, method)] = [_cell(values.get(n, np.nan)) for n in ns]
        sections.append((f"{title}, all methods (mean over HMMs)", pd.DataFrame(rows, index=ns).T))
    return description, sections


def _markdown_table(table: pd.DataFrame) -> list[str]:
    lines = [
        "| n | " + " | ".join(str(n) for n in table.columns) + " |",
        "| --- | " + " | ".join("---:" for _ in table.columns) + " |",
    ]
    lines += ["| " + " | ".join([label, *cells]) + " |" for label, cells in zip(table.index, table.to_numpy())]
    return lines


def table3_markdown(summary: pd.DataFrame) -> str:
    """The Table 3 comparison and the per-method tables as Markdown."""
    description, sections = table3_sections(summary)
    lines = [f"# {TITLE}", "", description, ""]
    for title, table in sections:
        lines += [f"## {title}", "", *_markdown_table(table), ""]
    return "\n".join(lines)


def table3_html(summary: pd.DataFrame) -> str:
    """The same tables as a standalone HTML page (for ``snakemake --report``)."""
    description, sections = table3_sections(summary)
    body = [f"<h1>{html.escape(TITLE)}</h1>", f"<p>{html.escape(description)}</p>"]
    for title, table in sections:
        body += [f"<h2>{html.escape(title)}</h2>", table.rename_axis("n", axis=1).to_html(border=0)]
    style = (
        "body{font-family:sans-serif;font-size:13px} table{border-collapse:collapse}"
        " th,td{padding:2px 8px;text-align:right;border-bottom:1px solid #ddd} tbody th{text-align:left}"
    )
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(TITLE)}</title>"
        f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def write_table3_tables(
    table_csv: str | os.PathLike, markdown_path: str | os.PathLike, html_path: str | os.PathLike
) -> None:
    """Write the Markdown and HTML tables of ``table_csv`` (the summary of ``kicl.theory.experiment.write_table3``)."""
    summary = pd.read_csv(table_csv)
    write_text_atomic(markdown_path, table3_markdown(summary))
    write_text_atomic(html_path, table3_html(summary))


def figure_data(summary: pd.DataFrame) -> pd.DataFrame:
    """The numbers behind the figure, long format: panel, series, n, value, sd (NaN for the paper)."""
    frames = []
    for panel, metric, _ in PANELS:
        frames.append(
            pd.DataFrame(
                {
                    "panel": panel,
                    "series": summary["method"],
                    "n": summary["n"],
                    "value": summary[f"{metric}_mean"],
                    "sd": summary[f"{metric}_sd"],
                }
            )
        )
        frames.append(
            pd.DataFrame(
                {"panel": panel, "series": "paper", "n": PAPER_TABLE3["n"], "value": PAPER_TABLE3[panel], "sd": np.nan}
            )
        )
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
