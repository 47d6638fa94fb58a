"""The verdict table: per task, does the selected head's reconstruction beat the attention-free baselines?

Read from Table 2's long CSV (kicl.tables.table2): the selected head's held-out agreement with ŷ, the best
attention-free baseline (highest held-out agreement with ŷ), their paired difference with its interval and
p-value, and a one-line verdict computed from the paired differences against every baseline:

* every interval above 0 -> "beats every attention-free baseline";
* some interval below 0 -> "below the <baselines>";
* otherwise -> "not distinguishable from the <baselines whose interval contains 0>" (best first), with the
  number of baselines it does beat.

The same rule is applied to accuracy against gold (baselines and sentence-encoder KR), in its own column.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from kicl.analysis.baselines import BASELINES
from kicl.fileio import write_text_atomic
from kicl.tables.table2 import SHORT_LABELS, _encoder_label, to_markdown

THE = {
    "constant": "the constant ŷ",
    "gold_majority": "the gold-majority class",
    "vote": "the unweighted vote of the demonstration labels",
    "recency": "the last demonstration's label",
    "position": "the position-only kernel",
}


def _name(key: str) -> str:
    return _encoder_label(key) if key.startswith("encoder:") else THE.get(key, SHORT_LABELS.get(key, key))


def _join(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def verdict_line(diffs: dict, scores: dict | None = None, what: str = "attention-free baseline") -> str:
    """One line from paired differences {name: (delta, low, high)} (ordered by `scores` {name: value}, best first)."""
    if not diffs:
        raise ValueError("no paired differences to judge")
    order = sorted(diffs, key=lambda n: -(scores or {}).get(n, 0.0))
    below = [n for n in order if diffs[n][2] < 0]
    tied = [n for n in order if diffs[n][1] <= 0 <= diffs[n][2]]
    beaten = [n for n in order if diffs[n][1] > 0]
    if len(beaten) == len(order):
        return f"beats every {what}"
    if below:
        line = f"below {_join([_name(n) for n in below])}"
        return line + (f"; not distinguishable from {_join([_name(n) for n in tied])}" if tied else "")
    line = f"not distinguishable from {_join([_name(n) for n in tied])}"
    return line + (f" (beats the other {len(beaten)})" if beaten else "")


def verdict_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, task) of a Table 2 long frame."""
    rows = []
    for (model, task), sub in frame.groupby(["model", "task"], sort=False):
        sub = sub.set_index("row")
        if "recon_agreement" not in sub.index:
            continue
        head = sub.loc["recon_agreement"]
        agree = {
            b: float(sub.loc[f"baseline:{b}:agreement", "value"])
            for b in BASELINES
            if f"baseline:{b}:agreement" in sub.index
        }
        diffs = {b: tuple(sub.loc[f"diff:agreement:{b}", ["value", "ci_low", "ci_high", "p_value"]]) for b in agree}
        best = max(agree, key=agree.get)
        acc_keys = [k for k in sub.index if k.startswith("diff:accuracy:")]
        acc_diffs = {k.split(":", 2)[2]: tuple(sub.loc[k, ["value", "ci_low", "ci_high", "p_value"]]) for k in acc_keys}
        acc_scores = {}
        for name in acc_diffs:
            key = f"baseline:{name}:accuracy" if name in BASELINES else name
            acc_scores[name] = float(sub.loc[key, "value"]) if key in sub.index else 0.0
        d, lo, hi, p = diffs[best]
        rows.append(
            {
                "model": model,
                "task": task,
                "n_heldout": int(head["n"]),
                "head": head["head"],
                "selection_stability": head.get("selection_stability", np.nan),
                "head_agreement": head["value"],
                "head_agreement_low": head["ci_low"],
                "head_agreement_high": head["ci_high"],
                "best_baseline": best,
                "best_baseline_agreement": agree[best],
                "difference": d,
                "difference_low": lo,
                "difference_high": hi,
                "p_value": p,
                "verdict": verdict_line(diffs, agree),
                "verdict_vs_gold": verdict_line(acc_diffs, acc_scores, "attention-free baseline or encoder KR")
                if acc_diffs
                else "—",
            }
        )
    if not rows:
        raise ValueError("the Table 2 CSV has no selected-head rows (recon_agreement) to judge")
    return pd.DataFrame(rows)


def verdict_markdown(table: pd.DataFrame) -> str:
    view = pd.DataFrame(
        {
            "task": table["task"],
            "selected head": table["head"],
            "head: agreement with ŷ [CI]": [
                f"{v:.3f} [{lo:.3f}, {hi:.3f}]"
                for v, lo, hi in zip(table["head_agreement"], table["head_agreement_low"], table["head_agreement_high"])
            ],
            "best attention-free baseline": [
                f"{SHORT_LABELS[b]} ({v:.3f})" for b, v in zip(table["best_baseline"], table["best_baseline_agreement"])
            ],
            "Δ [CI], p": [
                f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}], p={p:.3f}"
                for d, lo, hi, p in zip(
                    table["difference"], table["difference_low"], table["difference_high"], table["p_value"]
                )
            ],
            "n": table["n_heldout"],
            "verdict (agreement with ŷ)": table["verdict"],
            "verdict (accuracy vs gold)": table["verdict_vs_gold"],
        }
    )
    return to_markdown(view)


def write_verdict(table2_csvs, csv, md, level: float = 0.95) -> pd.DataFrame:
    """Verdict CSV + Markdown from one or more Table 2 long CSVs."""
    frame = pd.concat([pd.read_csv(path) for path in table2_csvs], ignore_index=True)
    table = verdict_table(frame)
    table.to_csv(csv, index=False, float_format="%.6g")
    caption = (
        f"Verdict per task: the selected head's held-out agreement with ŷ against the attention-free baselines; "
        f"Δ = selected head − best baseline, paired {int(level * 100)}% bootstrap interval and p-value (Table 2). "
        "A verdict says 'beats' only where the paired interval lies above 0."
    )
    parts = [f"## {model}\n\n{verdict_markdown(sub)}" for model, sub in table.groupby("model", sort=False)]
    write_text_atomic(md, caption + "\n\n" + "\n".join(parts))
    return table
