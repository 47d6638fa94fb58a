"""Table 2 (paper §5.5): explicit kernel regression vs ICL, head chosen on `select`, scored on `heldout`.

Rows per task: the LM's ICL accuracy; the agreement of the chosen head's reconstruction ỹ with ŷ; ỹ's
accuracy against gold; every attention-free baseline of kicl.analysis.baselines (agreement with ŷ and
accuracy against gold); sentence-encoder kernel regression over the same in-prompt demonstrations (raw
cosine, as in the paper, and exp(cos/τ)); and paired differences (selected head − each baseline, selected
head − encoder KR) with intervals and p-values. The head is the one whose ỹ agrees most with ŷ on the
`select` prompts (ties: lowest layer, then head), using the kernel-weight pooling `analysis.table_pooling`.
Intervals are percentile bootstraps (`analysis.bootstrap`); with `analysis.nested_bootstrap` each resample
repeats the head selection (kicl.analysis.head_selection). Balanced accuracy and macro-F1 sit beside every
accuracy in the CSV and in a second Markdown table, with intervals from the same resamples.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from kicl.analysis import stats
from kicl.analysis.baselines import (
    BASELINES,
    classification_scores,
    resampled_classification_scores,
)
from kicl.analysis.head_selection import nested_bootstrap, selection_data
from kicl.fileio import write_text_atomic
from kicl.store.heads import HeadId
from kicl.store.reader import open_store
from kicl.tables.paper import paper_table2_value
from kicl.tables.render import estimate_cell, metric_cell, row_label, to_latex, to_markdown

log = logging.getLogger(__name__)


def encoder_predictions(csv, held_prompts, held_gold, split: str = "heldout") -> dict:
    """Encoder-KR predictions for the store's held-out rows (prompt_id = store row), by kernel."""
    frame = pd.read_csv(csv).set_index("prompt_id")
    missing = sorted(set(map(int, held_prompts)) - set(frame.index))
    if missing:
        raise ValueError(f"{csv} lacks held-out prompt ids {missing[:5]} of the forward store (stale predictions?)")
    rows = frame.loc[np.asarray(held_prompts, dtype=int)]
    if (rows["split"] != split).any() or (rows["gold"].to_numpy() != np.asarray(held_gold)).any():
        raise ValueError(f"{csv} and the forward store disagree on the split or gold of some prompts (stale file?)")
    return {kernel: rows[f"pred_{kernel}"].to_numpy() for kernel in ("cosine", "softmax")}


#: (predictor, reference) behind each row key of the LM part of the table
def _row_keys(encoders) -> list[tuple[str, str, str]]:
    keys = [
        ("icl_accuracy", "icl", "gold"),
        ("recon_agreement", "head", "prediction"),
        ("recon_accuracy", "head", "gold"),
    ]
    for name in BASELINES:
        keys += [(f"baseline:{name}:agreement", name, "prediction"), (f"baseline:{name}:accuracy", name, "gold")]
    keys += [(name, name, "gold") for name in encoders]
    return keys


@dataclass(frozen=True)
class Table2Options:
    """How Table 2 is computed: the kernel-weight pooling behind the head choice, the encoder-KR softmax
    temperature, the bootstrap (``analysis.bootstrap``), the paper's aliases, the scored split, the vote-tie
    rule and whether each resample repeats the head selection."""

    pooling: str = "max"
    tau: float = 0.1
    n_boot: int = 1000
    seed: int = 0
    level: float = 0.95
    aliases: dict | None = None
    split: str = "heldout"
    ties: str = "fitted"
    nested: bool = True


def lm_rows(store, task: str, options: Table2Options, encoder_csvs: dict | None = None) -> list[dict]:
    """Every row of one task's store: ICL, the selected head, the baselines, encoder KR and the paired differences.

    `encoder_csvs`: encoder name -> its per-prompt KR predictions CSV for this task (scored on the same
    resamples, so their differences with the head are paired).
    """
    ds = open_store(store, needs=["kernel_weight", "demo_label", "prediction", "gold", "split"])
    data = selection_data(ds, options.pooling, options.ties, score_split=options.split)
    encoders = []
    for encoder, csv in (encoder_csvs or {}).items():
        for kernel, pred in encoder_predictions(csv, data.held_prompts, data.held_gold, options.split).items():
            data.extra[f"encoder:{encoder}:{kernel}"] = pred
            encoders.append(f"encoder:{encoder}:{kernel}")
    res = nested_bootstrap(data, options.n_boot, options.seed, options.level, options.nested)
    layer, head = res["head"]
    base = {
        "task": task,
        "n": len(data.held_pred),
        "head": HeadId(layer, head).label,
        "select_agreement": res["select_agreement"],
        "selection_stability": res["stability"],
        "pooling": options.pooling,
    }
    rows = [{**base, **row} for row in _score_rows(res, data, encoders, options)]
    rows += [{**base, **row} for row in _difference_rows(res, encoders, options.tau)]
    for ref in ("prediction", "gold"):  # one family per reference: the head against every competitor
        family = [r for r in rows if r["row"].startswith("diff:") and r["reference"] == ref]
        for row, adjusted in zip(family, stats.holm([r["p_value"] for r in family])):
            row["p_holm"] = adjusted
    return rows


def _score_rows(res: dict, data, encoders: list[str], options: Table2Options) -> list[dict]:
    """One row per predictor and reference: the score with its interval, balanced accuracy and macro-F1."""
    refs = {"prediction": data.held_pred, "gold": data.held_gold}
    rows = []
    for key, name, ref in _row_keys(encoders):
        value, low, high = res["scores"][(name, ref)]
        extra = classification_scores(res["preds"][name], refs[ref], data.n_labels)
        boot = resampled_classification_scores(
            res["resampled"]["preds"][name], refs[ref], data.n_labels, res["resampled"]["weights"]
        )
        bounds = {m: stats.percentile_interval(boot[m], options.level) for m in ("balanced_accuracy", "macro_f1")}
        rows.append(
            {
                "row": key,
                "reference": ref,
                "value": value,
                "ci_low": low,
                "ci_high": high,
                "balanced_accuracy": extra["balanced_accuracy"],
                "balanced_accuracy_low": bounds["balanced_accuracy"][0],
                "balanced_accuracy_high": bounds["balanced_accuracy"][1],
                "macro_f1": extra["macro_f1"],
                "macro_f1_low": bounds["macro_f1"][0],
                "macro_f1_high": bounds["macro_f1"][1],
                "tau": options.tau if key.endswith(":softmax") else np.nan,
            }
        )
    return rows


def _difference_rows(res: dict, encoders: list[str], tau: float) -> list[dict]:
    """The paired differences: selected head − each baseline (agreement and accuracy), − each encoder (accuracy)."""
    rows = []
    for name in list(BASELINES) + encoders:
        for ref, what in (("prediction", "agreement"), ("gold", "accuracy")):
            if name.startswith("encoder:") and ref == "prediction":
                continue
            delta, low, high, p = res["diffs"][(name, ref)]
            rows.append(
                {
                    "row": f"diff:{what}:{name}",
                    "reference": ref,
                    "value": delta,
                    "ci_low": low,
                    "ci_high": high,
                    "p_value": p,
                    "tau": tau if name.endswith(":softmax") else np.nan,
                }
            )
    return rows


def encoder_rows(csv, task: str, encoder: str, options: Table2Options) -> list[dict]:
    """Encoder-KR rows (cosine, softmax) for one task from the per-prompt predictions CSV."""
    tau, split = options.tau, options.split
    frame = pd.read_csv(csv)
    frame = frame[frame["split"] == split]
    if frame.empty:
        raise ValueError(f"{csv} has no '{split}' prompts")
    rows = []
    for kernel in ("cosine", "softmax"):
        value, low, high = stats.bootstrap_mean(
            frame[f"pred_{kernel}"].to_numpy() == frame["gold"].to_numpy(),
            n_boot=options.n_boot,
            seed=options.seed,
            level=options.level,
        )
        rows.append(
            {
                "task": task,
                "n": len(frame),
                "row": f"encoder:{encoder}:{kernel}",
                "value": value,
                "ci_low": low,
                "ci_high": high,
                "tau": tau if kernel == "softmax" else np.nan,
            }
        )
    return rows


def wide_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Methods as rows; per task an 'ours [95% CI]' column, and a 'paper' column where the paper has the task."""
    tasks = list(dict.fromkeys(frame["task"]))
    keys = list(dict.fromkeys(frame["row"]))
    out = []
    if "head" in frame:
        heads = frame.dropna(subset=["head"]).drop_duplicates("task").set_index("task")
        if len(heads):
            row = {"method": "selected head (agreement on select; share of resamples choosing it)"}
            for task in tasks:
                if task in heads.index:
                    r = heads.loc[task]
                    stable = r.get("selection_stability", np.nan)
                    row[task] = f"{r['head']} ({r['select_agreement']:.3f}" + (
                        f"; {stable:.2f})" if pd.notna(stable) else ")"
                    )
                else:
                    row[task] = "—"
                row[f"{task} (paper)"] = ""
            out.append(row)
    for key in keys:
        sub = frame[frame["row"] == key].set_index("task")
        tau = sub["tau"].dropna().iloc[0] if "tau" in sub and sub["tau"].notna().any() else None
        row = {"method": row_label(key, tau)}
        for task in tasks:
            if task in sub.index:
                r = sub.loc[task]
                row[task] = estimate_cell(
                    *r[["value", "ci_low", "ci_high"]], r.get("p_value", np.nan), r.get("p_holm", np.nan)
                )
                paper = r["paper"]
                row[f"{task} (paper)"] = "—" if pd.isna(paper) else f"{paper:.3f}"
            else:
                row[task], row[f"{task} (paper)"] = "—", "—"
        out.append(row)
    n_row = {"method": "held-out prompts (n)"}
    for task in tasks:
        n_row[task] = str(int(frame[frame["task"] == task]["n"].max()))
        n_row[f"{task} (paper)"] = "300"
    out.append(n_row)
    without_paper = [f"{t} (paper)" for t in tasks if not frame.loc[frame["task"] == t, "paper"].notna().any()]
    return pd.DataFrame(out).drop(columns=without_paper)


def metrics_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Balanced accuracy / macro-F1 (with their intervals where present) per method row and task."""
    if "balanced_accuracy" not in frame:
        return pd.DataFrame()
    frame = frame[~frame["row"].str.startswith("diff:") & frame["balanced_accuracy"].notna()]
    tasks = list(dict.fromkeys(frame["task"]))
    out = []
    for key in dict.fromkeys(frame["row"]):
        sub = frame[frame["row"] == key].set_index("task")
        tau = sub["tau"].dropna().iloc[0] if "tau" in sub and sub["tau"].notna().any() else None
        row = {"method": row_label(key, tau)}
        for task in tasks:
            row[task] = (
                f"{metric_cell(sub.loc[task], 'balanced_accuracy')} / {metric_cell(sub.loc[task], 'macro_f1')}"
                if task in sub.index
                else "—"
            )
        out.append(row)
    return pd.DataFrame(out)


def write_table(frame: pd.DataFrame, csv, md, tex, caption: str) -> None:
    """Long CSV (one row per method and task) plus Markdown and LaTeX of the wide layout."""
    with_paper = frame.copy()
    with_paper.to_csv(csv, index=False, float_format="%.6g")
    wide = wide_table(with_paper)
    text = f"{caption}\n\n{to_markdown(wide)}"
    metrics = metrics_table(with_paper)
    if len(metrics):
        text += (
            "\nBalanced accuracy / macro-F1 of the same predictions (intervals from the same resamples):\n\n"
            + to_markdown(metrics)
        )
    write_text_atomic(md, text)
    write_text_atomic(tex, to_latex(wide, caption))


def add_paper_column(frame: pd.DataFrame, aliases: dict | None) -> pd.DataFrame:
    frame = frame.copy()
    frame["paper"] = [paper_table2_value(r, t, aliases) for r, t in zip(frame["row"], frame["task"])]
    frame["paper"] = frame["paper"].astype(float)
    return frame


def table2(model: str, stores: dict, encoder_csvs: dict, csv, md, tex, options: Table2Options | None = None):
    """Table 2 for one model: `stores` task -> store path; `encoder_csvs` (encoder, task) -> KR predictions CSV."""
    o = options or Table2Options()
    rows = []
    for task, store in stores.items():
        encoders = {encoder: path for (encoder, t), path in encoder_csvs.items() if t == task}
        rows += lm_rows(store, task, o, encoders)
    frame = add_paper_column(pd.DataFrame(rows), o.aliases)
    frame.insert(0, "model", model)
    order = {t: i for i, t in enumerate(stores)}
    frame = frame.sort_values("task", key=lambda s: s.map(order), kind="stable")
    how = "nested (head re-selected in each resample)" if o.nested else "conditional on the selected head"
    caption = (
        f"Table 2 ({model}): head chosen on 'select' by agreement with the ICL prediction (pooling '{o.pooling}'), "
        f"scored on '{o.split}'; {int(o.level * 100)}% percentile-bootstrap intervals ({o.n_boot} resamples, {how}); "
        "Δ rows: paired differences on the same resamples with two-sided bootstrap p-values, Holm-adjusted over "
        "the Δ rows of one task and reference; vote ties broken by the rule fitted on 'select'; "
        "paper = Han et al. Table 2 (GPT-J-6B) where the task matches."
    )
    write_table(frame, csv, md, tex, caption)
    return frame


def encoder_table(model: str, encoder_csvs: dict, csv, md, tex, options: Table2Options | None = None):
    """Encoder-KR rows only (needs prompt files and encoders, no forward pass), with the paper's rows beside."""
    o = options or Table2Options()
    rows = []
    for (encoder, task), path in encoder_csvs.items():
        rows += encoder_rows(path, task, encoder, o)
    frame = add_paper_column(pd.DataFrame(rows), o.aliases)
    frame.insert(0, "model", model)
    caption = (
        f"Sentence-encoder kernel regression over the in-prompt demonstrations of the {model} prompts, scored on "
        f"'{o.split}'; {int(o.level * 100)}% percentile-bootstrap intervals ({o.n_boot} resamples); "
        "paper = Han et al. Table 2."
    )
    write_table(frame, csv, md, tex, caption)
    return frame
