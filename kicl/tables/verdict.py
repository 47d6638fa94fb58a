"""The verdict table: the decision rule (kicl.analysis.decision, docs/decision-rule.md) per (model, task, condition).

One row per task: the decision (*supports*, *contradicts*, *undecided*), a short line naming the criteria met,
missed and open, the cross-fitted agreement of the selected head and of the best attention-free competitor,
their difference with its 1 − 2α interval, the minimum detectable difference and the prompts that would decide,
and the selected head's label invariance. A second CSV holds every head's numbers behind it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from kicl.analysis.decision import (
    MET,
    MISSED,
    OPEN,
    DecisionRule,
    decide,
    head_invariance,
    load_decision_data,
    where_it_looks,
)
from kicl.fileio import write_text_atomic
from kicl.store.heads import HeadId
from kicl.tables.render import interval_cell, to_markdown

CRITERIA = {"advantage": "advantage", "label_invariance": "label invariance"}
COMPETITOR_NAMES = {
    "constant": "constant ŷ",
    "vote": "vote (fitted ties)",
    "recency": "last label",
    "position": "position-only kernel",
    "label_sequence": "label-sequence model",
}


def _count(n: float) -> str:
    return "∞" if not np.isfinite(n) else f"{int(n):,}"


def verdict_line(result: dict) -> str:
    """'<decision> — met: …; missed: …; open: …' with the MDD and prompts to decide for an open advantage."""
    parts = []
    for status in (MISSED, OPEN, MET):
        names = []
        for key, name in CRITERIA.items():
            if result[key] != status:
                continue
            if key == "advantage" and status == OPEN:
                name += f" (MDD {result['mdd']:.3f}, n≈{_count(result['n_to_decide'])})"
            if key == "label_invariance" and status == OPEN:
                missing = not np.isfinite(result["invariance"])
                name += " (no label-flip partner)" if missing else f" (n≈{_count(result['invariance_n_to_decide'])})"
            names.append(name)
        if names:
            parts.append(f"{status}: {', '.join(names)}")
    return f"{result['decision']} — {'; '.join(parts)}"


def verdict_row(model: str, task: str, condition: str, result: dict, rule: DecisionRule) -> dict:
    heads = " / ".join(HeadId(*h).label for h in result["heads"])
    return {
        "model": model,
        "task": task,
        "condition": condition,
        "decision": result["decision"],
        "verdict": verdict_line(result),
        "n": result["n"],
        "heads": heads,
        "head_stability": result["head_stability"],
        "competitors": " / ".join(result["competitors"]),
        **{key: result[key] for key in ("head_agreement", "competitor_agreement", "difference")},
        **{key: result[key] for key in ("difference_low", "difference_high", "p_value", "discordance", "mdd")},
        "n_to_decide": result["n_to_decide"],
        "tie_rate": result["tie_rate"],
        "advantage": result["advantage"],
        **{key: result[key] for key in ("invariance", "invariance_low", "invariance_high", "label_invariance")},
        "invariance_n_to_decide": result["invariance_n_to_decide"],
        "margin": rule.margin,
        "alpha": rule.alpha,
        "invariance_threshold": rule.invariance_threshold,
    }


def heads_frame(model: str, task: str, condition: str, data) -> pd.DataFrame:
    """Every head: its agreement with ŷ on each fold and its label invariance."""
    layer, head = np.divmod(np.arange(data.yt.shape[1]), data.n_heads)
    agree = data.yt == data.pred[:, None]
    return pd.DataFrame(
        {
            "model": model,
            "task": task,
            "condition": condition,
            "head_id": [HeadId(a, b).label for a, b in zip(layer, head)],
            "layer": layer,
            "head": head,
            "select_agreement": agree[data.fold == 0].mean(0),
            "heldout_agreement": agree[data.fold == 1].mean(0),
            "label_invariance": head_invariance(data),
        }
    )


def verdict_markdown(table: pd.DataFrame) -> str:
    view = pd.DataFrame(
        {
            "task": table["task"],
            "decision": table["decision"],
            "criteria": [line.split(" — ", 1)[1] for line in table["verdict"]],
            "head (select / heldout fit)": table["heads"],
            "best competitor": [" / ".join(COMPETITOR_NAMES[c] for c in s.split(" / ")) for s in table["competitors"]],
            "Δ agreement [CI]": [
                interval_cell(*r, signed=True)
                for r in zip(table["difference"], table["difference_low"], table["difference_high"])
            ],
            "MDD": [f"{v:.3f}" for v in table["mdd"]],
            "label invariance r [CI]": [
                interval_cell(*r) for r in zip(table["invariance"], table["invariance_low"], table["invariance_high"])
            ],
            "head agreement: weights / input span / label token": [
                " / ".join(f"{v:.3f}" for v in values)
                for values in table[["head_agreement", "agreement_input_span", "agreement_label_token"]].to_numpy()
            ],
            "vote ties": [f"{v:.2f}" for v in table["tie_rate"]],
            "n": table["n"],
        }
    )
    return to_markdown(view)


def noise_floor_line(dtype_check) -> str:
    """The forward pass's numeric noise floor from the dtype check's float32-vs-bfloat16 comparison."""
    check = json.loads(Path(dtype_check).read_text())
    return (
        f"Numeric noise floor: float32 against {check['candidate']} on the first {check['prompts']} prompts "
        f"(results/dtype_check): ŷ agreement {check['prediction_agreement']:.3f}, largest |Δ kernel weight| "
        f"{check['max_kernel_diff']:.3f} (mean {check['mean_kernel_diff']:.4f}), largest |Δ label logit| "
        f"{check['max_label_logit_diff']:.2f}; stores computed in {check['chosen']}. The thread count does not reach "
        "the numbers (capture.intra_op_threads; benchmarks/noise_floor.py)."
    )


@dataclass(frozen=True)
class VerdictInputs:
    """The stores of one (model, condition) by task, each task's label-flip partner store where it has one (the
    label-invariance criterion), and the dtype check's JSON if that rule ran (the numeric noise floor)."""

    stores: dict
    partners: dict = field(default_factory=dict)
    dtype_check: str | Path | None = None


def write_verdict(model, condition, inputs: VerdictInputs, rule: DecisionRule, pooling, ties, out) -> None:
    """verdict.csv, verdict.md and verdict_heads.csv (paths in `out`) for the stores of `inputs`."""
    stores, partners, dtype_check = inputs.stores, inputs.partners, inputs.dtype_check
    rows, heads = [], []
    for task, store in stores.items():
        data = load_decision_data(store, pooling, partners.get(task), ties)
        result = decide(data, rule)
        looks = where_it_looks(store, result["heads"], ties)
        rows.append({**verdict_row(model, task, condition, result, rule), **looks})
        heads.append(heads_frame(model, task, condition, data))
    table = pd.DataFrame(rows)
    table.to_csv(out["csv"], index=False, float_format="%.6g")
    pd.concat(heads).to_csv(out["heads"], index=False, float_format="%.6g")
    level = int(round((1 - 2 * rule.alpha) * 100))
    caption = (
        f"Decision rule (docs/decision-rule.md), {model} / {condition}. Cross-fitted: the head and the best "
        "attention-free competitor are chosen on one split and scored on the other, both ways, so n counts every "
        f"prompt. Δ = head − best competitor in agreement with ŷ, {level}% bias-corrected nested-bootstrap "
        f"interval; advantage met if it lies above 0 and not inside ±{rule.margin}, missed if below 0 or inside "
        f"±{rule.margin}. Label invariance: the head's residual weight correlation between gold and flipped "
        f"labels, met if its {level}% "
        f"interval lies at or above {rule.invariance_threshold}, missed if below. MDD: minimum detectable Δ at "
        f"{rule.power:.0%} power; n≈: prompts that would decide an open advantage. Vote ties: share of prompts "
        "whose unweighted label vote ties (broken by the rule fitted on the other split). verdict.csv also gives, "
        "as a diagnostic of where the selected heads look, their agreement when the weight is read from the input "
        "span alone or from the label token alone."
    )
    floor = "\n\n" + noise_floor_line(dtype_check) if dtype_check else ""
    write_text_atomic(out["md"], caption + floor + "\n\n" + verdict_markdown(table))
