"""The conditions stage's numbers files (rule ``conditions_numbers``) and their reading back by the render-only
rules ``conditions_tables`` and ``conditions_figures``.

``write_condition_numbers`` writes the five CSVs of NUMBER_FILES from kicl.analysis.conditions.compare_conditions:
the condition table (each condition with its one-line reading), the order groups, the Table 1 analogue, the
per-head agreement of the conditions drawn side by side, and the points of conditions.png.
``read_condition_numbers`` turns the CSVs back into a ConditionResults (the curves recomputed from the condition
table) for the tables; the figures read their two CSVs as they are.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from kicl.analysis.conditions import (
    ConditionResults,
    bandwidth_curve,
    bandwidth_members,
    label_noise_curve,
)
from kicl.fileio import write_csv_atomic

#: the numbers files in the stage's output folder results/conditions/{model}/{task}/, by output key
NUMBER_FILES = {
    "csv": "conditions.csv",
    "order_csv": "order_groups.csv",
    "table1_csv": "table1.csv",
    "heads_csv": "heads.csv",
    "figure_csv": "conditions_figure.csv",
}
#: columns holding text (an empty string is written as an empty field, which pandas reads back as NaN)
TEXT_COLUMNS = {
    "csv": ["model", "task", "condition", "differs_from_reference", "head_ref", "head_own", "reading"],
    "order_csv": ["members", "head_ref", "redraw_condition", "redraw_kind", "pairs_note"],
    "table1_csv": ["condition", "test_inputs"],
    "heads_csv": ["condition"],
    "figure_csv": ["task", "panel", "condition", "x_name", "series"],
}


def reading(row, reference: str, alpha: float = 0.05) -> str:
    """One line from a condition's paired difference of accuracy to the reference, decided by its Holm-adjusted
    p-value at `alpha` (the table reads every condition against the one reference), e.g. "nearest − paper:
    +0.120 [+0.030, +0.210], McNemar p = 0.010, Holm p = 0.030 < 0.05: differs from paper"."""
    if row["condition"] == reference:
        return f"{reference}: the reference condition"
    d, lo, hi, p = (row[f"accuracy_diff{s}"] for s in ("", "_low", "_high", "_p"))
    if not np.isfinite(d):
        return f"{row['condition']} − {reference}: no paired difference"
    p_holm = row.get("accuracy_diff_p_holm", p)
    verdict = (
        f"Holm p = {p_holm:.3f} < {alpha:g}: differs from {reference}"
        if p_holm < alpha
        else f"Holm p = {p_holm:.3f} ≥ {alpha:g}: no difference shown"
    )
    return f"{row['condition']} − {reference}: {d:+.3f} [{lo:+.3f}, {hi:+.3f}], McNemar p = {p:.3f}, {verdict}"


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


def head_map_conditions(names, reference: str, chosen=None) -> list[str]:
    """The conditions whose per-head heat-maps are drawn side by side: `chosen` (config conditions_stage.head_maps)
    or, when empty, every condition with the reference first."""
    names = list(names)
    chosen = list(chosen) if chosen else [reference] + [n for n in names if n != reference]
    unknown = [c for c in chosen if c not in names]
    if unknown:
        raise ValueError(f"conditions_stage.head_maps: {unknown} are not among the conditions {names}")
    return chosen


def write_condition_numbers(results: ConditionResults, paths: dict, model: str = "", head_maps=None) -> None:
    """Write every file of NUMBER_FILES (paths: key -> path); `head_maps`: the conditions of heads.csv."""
    metrics = results.metrics.copy()
    metrics["reading"] = [reading(r, results.reference, 1 - results.level) for _, r in metrics.iterrows()]
    metrics.insert(0, "task", results.task)
    if model:
        metrics.insert(0, "model", model)
    write_csv_atomic(metrics, paths["csv"], float_format="%.6g")
    write_csv_atomic(results.order, paths["order_csv"], float_format="%.6g")
    write_csv_atomic(results.table1, paths["table1_csv"], float_format="%.6g")
    chosen = head_map_conditions(results.metrics["condition"], results.reference, head_maps)
    heads = results.heads[results.heads["condition"].isin(chosen)]
    write_csv_atomic(heads, paths["heads_csv"], index=False, float_format="%.6g")
    write_csv_atomic(figure_frame(results), paths["figure_csv"], index=False, float_format="%.6g")


def read_numbers_csv(path, key: str) -> pd.DataFrame:
    """One numbers CSV of the stage (key of NUMBER_FILES), its text columns as strings ('' where empty)."""
    text = TEXT_COLUMNS.get(key, [])
    frame = pd.read_csv(path, dtype=dict.fromkeys(text, str))  # as written, even where a column is empty or numeric
    for column in text:
        if column in frame:
            frame[column] = frame[column].fillna("")
    return frame


def read_condition_numbers(paths: dict, protocols: dict, reference: str, bootstrap: dict, points: str = "all"):
    """The ConditionResults the tables are written from, read back from the numbers CSVs (paths: key -> path);
    the bandwidth and label-noise curves recomputed from the condition table and `protocols` (condition ->
    effective protocol); level and n_boot from config analysis.bootstrap. Its metrics keep the `reading` column;
    its `heads` is left empty."""
    table = read_numbers_csv(paths["csv"], "csv")
    task = str(table["task"].iloc[0])
    metrics = table.drop(columns=[c for c in ("model", "task") if c in table])
    missing = [c for c in metrics["condition"] if c not in protocols]
    if missing or reference not in set(metrics["condition"]):
        raise ValueError(f"{paths['csv']}: conditions {missing or [reference]} have no protocol or are missing")
    used = {c: protocols[c] for c in metrics["condition"]}
    return ConditionResults(
        reference=reference,
        task=task,
        metrics=metrics,
        order=read_numbers_csv(paths["order_csv"], "order_csv"),
        bandwidth=bandwidth_curve(metrics, bandwidth_members(used, reference)),
        label_noise=label_noise_curve(metrics, used, reference),
        table1=read_numbers_csv(paths["table1_csv"], "table1_csv"),
        heads=pd.DataFrame(),
        level=float(bootstrap["level"]),
        n_boot=int(bootstrap["n_boot"]),
        points=points,
    )
