"""Table 3 written out: the paper's published numbers beside ours, as Markdown and as a standalone HTML page."""

from __future__ import annotations

import html
import os

import numpy as np
import pandas as pd

from kicl.fileio import write_text_atomic
from kicl.tables.paper import paper_table3_value
from kicl.tables.render import mean_sd_cell
from kicl.theory.table3 import MAIN_METHOD, METHOD_LABELS

METRIC_TITLES = {
    "l1": "L1 distance",
    "l2": "L2 distance",
    "acc_posterior": "accuracy vs posterior argmax",
    "acc_sampled": "accuracy vs sampled y_test",
}
TITLE = "Table 3: kernel regression vs the exact Bayesian posterior (synthetic mixture-of-HMM tasks)"


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
        return [mean_sd_cell(m, s) for m, s in zip(main[f"{metric}_mean"], main[f"{metric}_sd"])]

    comparison = {
        "paper distance": [mean_sd_cell(paper_table3_value("distance", n)) for n in ns],
        "ours distance (L1)": ours("l1"),
        "paper accuracy": [mean_sd_cell(paper_table3_value("accuracy", n)) for n in ns],
        "ours accuracy (vs posterior argmax)": ours("acc_posterior"),
        "ours accuracy vs sampled y_test": ours("acc_sampled"),
    }
    sections = [("Paper vs ours (kernel regression, Eq. 6)", pd.DataFrame(comparison, index=ns).T)]
    for metric, title in METRIC_TITLES.items():
        rows = {}
        for method, frame in summary.groupby("method", sort=False):
            values = frame.set_index("n")[f"{metric}_mean"]
            rows[METHOD_LABELS.get(method, method)] = [mean_sd_cell(values.get(n, np.nan)) for n in ns]
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
