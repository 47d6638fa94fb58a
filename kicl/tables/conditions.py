"""The conditions stage's tables (rule ``conditions_tables``, render only): Markdown and LaTeX of the condition
table, the order groups and the Table 1 analogue, from the numbers CSVs (kicl.analysis.conditions_stage).
conditions.md also has the curves and each condition's one-line reading; conditions.tex holds the condition and
order-group tables.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from kicl.analysis.baselines import BASELINES
from kicl.analysis.conditions import ConditionResults
from kicl.analysis.conditions_stage import reading
from kicl.fileio import write_text_atomic
from kicl.tables.render import SHORT_LABELS, interval_cell, to_latex, to_markdown

#: the tables' file names in the stage's output folder, by output key
TABLE_FILES = {
    "md": "conditions.md",
    "tex": "conditions.tex",
    "table1_md": "table1.md",
    "table1_tex": "table1.tex",
}


def _get(row, name: str, signed: bool = False) -> str:
    if name not in row or pd.isna(row[name]):
        return "—"
    return interval_cell(row[name], row[f"{name}_low"], row[f"{name}_high"], signed)


def _best_baseline(row) -> str:
    values = {b: row.get(f"baseline_{b}_agreement", np.nan) for b in BASELINES}
    values = {b: v for b, v in values.items() if pd.notna(v)}
    if not values:
        return "—"
    best = max(values, key=values.get)
    return f"{SHORT_LABELS[best]}: {_get(row, f'baseline_{best}_agreement')}"


def condition_table(metrics: pd.DataFrame, reference: str) -> pd.DataFrame:
    """The wide, readable condition table (one row per condition)."""
    rows = []
    for _, row in metrics.iterrows():
        is_ref = row["condition"] == reference
        encoders = [c[8:-9] for c in row.index if c.startswith("encoder_") and c.endswith("_accuracy")]
        rows.append(
            {
                "condition": row["condition"],
                "differs from reference": row["differs_from_reference"] or "—",
                "n": int(row["n"]),
                "ICL accuracy": _get(row, "accuracy"),
                f"Δ accuracy vs {reference}": "—" if is_ref else _get(row, "accuracy_diff", signed=True),
                "McNemar p": "—" if is_ref or pd.isna(row["accuracy_diff_p"]) else f"{row['accuracy_diff_p']:.3f}",
                "Holm p": "—"
                if is_ref or pd.isna(row.get("accuracy_diff_p_holm"))
                else f"{row['accuracy_diff_p_holm']:.3f}",
                "ŷ changed vs reference": "—" if is_ref else _get(row, "yhat_change"),
                f"head chosen on {reference}: agreement": f"{row['head_ref']}: {_get(row, 'head_ref_agreement')}",
                "re-chosen head: agreement": f"{row['head_own']}: {_get(row, 'head_own_agreement')}",
                "best attention-free baseline (agreement)": _best_baseline(row),
                "encoder KR accuracy": "; ".join(f"{e}: {_get(row, f'encoder_{e}_accuracy')}" for e in encoders) or "—",
                "mean demo similarity": _get(row, "mean_demo_similarity"),
                "ŷ = majority shown label": _get(row, "majority_shown_agreement"),
                "wrong shown labels": _get(row, "wrong_label_share"),
                "reading": reading(row, reference),
            }
        )
        if "calibrated_accuracy" in row.index and pd.notna(row["calibrated_accuracy"]):
            rows[-1]["calibrated accuracy (gain)"] = (
                f"{_get(row, 'calibrated_accuracy')} ({_get(row, 'calibrated_accuracy_gain', signed=True)})"
            )
    return pd.DataFrame(rows)


def order_table(order: pd.DataFrame) -> pd.DataFrame:
    if order.empty:
        return pd.DataFrame({"order groups": ["none (no conditions differ only in order_seed / demo_order)"]})
    rows = list(order.iterrows())
    return pd.DataFrame(
        {
            "orderings": order["members"],
            "main": np.where(order["main"], "yes", ""),
            "n": order["n"],
            "ŷ changed, mean over pairs of orderings": [_get(r, "yhat_pairwise_change") for _, r in rows],
            "ŷ not the same under every ordering": [_get(r, "yhat_any_change") for _, r in rows],
            "ỹ of the reference-chosen head changed, pairs (held-out)": [
                f"{r['head_ref']}: {_get(r, 'ytilde_pairwise_change')}" for _, r in rows
            ],
            "same (input, shown label) pairs": [_get(r, "same_demo_set") for _, r in rows],
            "ŷ changed under a re-drawn set (scale)": [
                f"{r['redraw_condition']}: {_get(r, 'redraw_yhat_change')}" if r["redraw_condition"] else "—"
                for _, r in rows
            ],
            "note": [r["pairs_note"] or "—" for _, r in rows],
        }
    )


def table1_table(table1: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame(
        {
            "test inputs": table1["test_inputs"],
            "condition": table1["condition"],
            "n": table1["n"],
            "ICL accuracy": [_get(r, "accuracy") for _, r in table1.iterrows()],
            "drop vs original": [
                "—"
                if r["test_inputs"] == "none"
                else f"{_get(r, 'drop', signed=True)}, p = {r['drop_p']:.3f} (Holm {r['drop_p_holm']:.3f})"
                for _, r in table1.iterrows()
            ],
            "inputs changed": [
                "—" if r["test_inputs"] == "none" else _get(r, "share_changed") for _, r in table1.iterrows()
            ],
            "drop on changed inputs": [
                "—"
                if r["test_inputs"] == "none" or pd.isna(r["drop_changed"])
                else f"{_get(r, 'drop_changed', signed=True)}, p = {r['drop_changed_p']:.3f}"
                for _, r in table1.iterrows()
            ],
        }
    )
    if table1["paper_accuracy"].notna().any():
        out["paper (GPT-J-6B, SST-2)"] = ["—" if pd.isna(v) else f"{v:.3f}" for v in table1["paper_accuracy"]]
        out["paper drop"] = ["—" if pd.isna(v) or v == 0 else f"{v:+.3f}" for v in table1["paper_drop"]]
    return out


def _curve_markdown(frame: pd.DataFrame, x: str, ys: list[str]) -> str:
    if frame.empty:
        return "none of the conditions qualifies.\n"
    view = pd.DataFrame({"condition": frame["condition"], x: [_get(r, x) for _, r in frame.iterrows()]})
    for y in ys:
        view[y] = [_get(r, y) for _, r in frame.iterrows()]
    return to_markdown(view)


def caption(results: ConditionResults, model: str = "") -> str:
    level = int(round(100 * results.level))
    who = f"{model}, " if model else ""
    return (
        f"Conditions of {who}task {results.task} against the reference condition '{results.reference}', paired on "
        f"the same test points ({'all test points' if results.points == 'all' else 'held-out test points'} for "
        f"accuracy, Δ and ŷ changes; held-out points for heads, baselines and encoder KR). Brackets: {level}% "
        f"percentile-bootstrap intervals ({results.n_boot} resamples of test points, the same resamples for every "
        "condition); Wilson intervals for ŷ-change rates. McNemar p: exact two-sided McNemar test of the paired "
        "difference; Holm p: adjusted across the conditions read against the reference, which decides each "
        "reading. The reference-chosen head is chosen once on the "
        "reference's select prompts; the re-chosen head on the condition's own select prompts (intervals "
        "conditional on the choice)."
    )


def write_condition_tables(results: ConditionResults, paths: dict, model: str = "") -> None:
    """Write every file of TABLE_FILES (paths: key -> path) from `results` as read back from the numbers CSVs
    (kicl.analysis.conditions_stage.read_condition_numbers: its metrics carry each condition's reading)."""
    metrics = results.metrics
    table = condition_table(metrics.drop(columns="reading"), results.reference)
    text = caption(results, model)
    parts = [
        f"{text}\n\n{to_markdown(table)}",
        "### Readings\n\n" + "\n".join(f"- {line}" for line in metrics["reading"]) + "\n",
        "### Order permutations\n\n" + to_markdown(order_table(results.order)),
        "### Bandwidth curve\n\n"
        + _curve_markdown(results.bandwidth, "mean_demo_similarity", ["accuracy", "head_ref_agreement"]),
        "### Label-noise curve (x: measured share of wrong shown labels)\n\n"
        + _curve_markdown(
            results.label_noise,
            "wrong_label_share",
            ["accuracy", "majority_shown_agreement", "head_ref_agreement", "head_own_agreement"],
        ),
        "### Table 1 analogue (accuracy by test-input type)\n\n" + to_markdown(table1_table(results.table1)),
    ]
    write_text_atomic(paths["md"], "\n".join(parts))
    order_caption = (
        f"Order permutations ({results.task}): conditions differing only in order_seed / demo_order; the share of "
        "test points whose prediction changes, averaged over pairs of orderings (comparable across group sizes), and "
        "the share not the same under every ordering; the same for the reconstruction by the reference-chosen head on "
        "held-out points; the share of test points whose orderings show the same (input, shown label) pairs; and, as "
        "scale, the share whose prediction changes when the demonstration set is re-drawn (order_groups.csv: "
        "redraw_kind says how it was measured). Wilson intervals."
    )
    write_text_atomic(paths["tex"], to_latex(table, text) + "\n" + to_latex(order_table(results.order), order_caption))
    t1_caption = (
        f"Table 1 analogue ({model + ', ' if model else ''}{results.task}): ICL accuracy by test-input type, drop = "
        f"paired difference to the original inputs ({int(round(100 * results.level))}% bootstrap interval, exact "
        "McNemar p, Holm-adjusted across the conditions); inputs changed: share of test inputs the transform changed "
        "(Wilson interval); drop on changed inputs: the paired difference on those only; "
        "paper: Han et al. Table 1 (GPT-J-6B on SST-2, inputs rewritten by GPT-3.5-turbo) where the task is SST-2."
    )
    t1 = table1_table(results.table1)
    write_text_atomic(paths["table1_md"], f"{t1_caption}\n\n{to_markdown(t1)}")
    write_text_atomic(paths["table1_tex"], to_latex(t1, t1_caption))
