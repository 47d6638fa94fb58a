"""Table rendering shared by every table: Markdown and LaTeX writers, cell formats and Table 2's row labels."""

from __future__ import annotations

import numpy as np
import pandas as pd

from kicl.analysis.baselines import BASELINE_LABELS

#: labels of the LM rows of Table 2, by row key
ROW_LABELS = {
    "icl_accuracy": "ICL accuracy",
    "recon_agreement": "ICL output reconstruction (ỹ vs ŷ)",
    "recon_accuracy": "Reconstructed performance (ỹ vs gold)",
}
#: short names of the attention-free baselines (in Δ rows and the conditions table)
SHORT_LABELS = {
    "constant": "constant ŷ",
    "gold_majority": "gold-majority class",
    "vote": "unweighted vote of the demonstration labels",
    "recency": "last demonstration's label",
    "position": "position-only kernel",
}


def encoder_label(key: str, tau=None) -> str:
    """'<encoder> KR, raw cosine' or '<encoder> KR, exp(cos/τ), τ=…' for a row key ``encoder:<name>:<kernel>``."""
    _, encoder, kernel = key.split(":")
    if kernel == "cosine":
        return f"{encoder} KR, raw cosine"
    return f"{encoder} KR, exp(cos/τ)" + ("" if tau is None or not np.isfinite(tau) else f", τ={tau:g}")


def row_label(key: str, tau=None) -> str:
    """The label of a Table 2 row key (LM rows, ``baseline:…``, ``diff:…``, ``encoder:…``)."""
    if key in ROW_LABELS:
        return ROW_LABELS[key]
    if key.startswith("baseline:"):
        _, name, what = key.split(":")
        return f"baseline: {BASELINE_LABELS[name]} ({'vs ŷ' if what == 'agreement' else 'vs gold'})"
    if key.startswith("diff:"):
        _, what, name = key.split(":", 2)
        other = encoder_label(name, tau) if name.startswith("encoder:") else SHORT_LABELS[name]
        return f"Δ {'agreement with ŷ' if what == 'agreement' else 'accuracy vs gold'}: selected head − {other}"
    return encoder_label(key, tau)


def interval_cell(value, low, high, signed: bool = False) -> str:
    """'0.612 [0.550, 0.671]' ('+0.…' when `signed`), '—' for a missing value."""
    if value is None or not np.isfinite(value):
        return "—"
    f = "{:+.3f}" if signed else "{:.3f}"
    return f"{f.format(value)} [{f.format(low)}, {f.format(high)}]"


def estimate_cell(value, low, high, p=np.nan, p_holm=np.nan) -> str:
    """An interval, signed with its p-value (and Holm-adjusted p) where `p` is given; '—' for a missing value."""
    if not np.isfinite(value):
        return "—"
    if np.isfinite(p):
        holm = f" (Holm {p_holm:.3f})" if np.isfinite(p_holm) else ""
        return f"{value:+.3f} [{low:+.3f}, {high:+.3f}] p={p:.3f}{holm}"
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def metric_cell(row, metric: str) -> str:
    """'0.612 [0.550, 0.671]' (the interval where the row has one, else the point value)."""
    low, high = row.get(f"{metric}_low", np.nan), row.get(f"{metric}_high", np.nan)
    if pd.notna(low) and pd.notna(high):
        return f"{row[metric]:.3f} [{low:.3f}, {high:.3f}]"
    return f"{row[metric]:.3f}"


def mean_sd_cell(mean: float, sd: float | None = None) -> str:
    """'0.612 ± 0.031' (the mean alone without a finite s.d.), '–' for a missing mean."""
    if not np.isfinite(mean):
        return "–"
    return f"{mean:.3f}" if sd is None or not np.isfinite(sd) else f"{mean:.3f} ± {sd:.3f}"


def to_markdown(wide: pd.DataFrame) -> str:
    """A frame as a Markdown table (columns as header, every value as text)."""
    cols = list(wide.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(["---"] * len(cols)) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in wide.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def tex_escape(text: str) -> str:
    """Text made safe for LaTeX, with ỹ, ŷ, τ and — in math or LaTeX spelling."""
    text = str(text).replace("\\", r"\textbackslash{}")
    for char in "&%$#_{}":
        text = text.replace(char, "\\" + char)
    return text.replace("ỹ", r"$\tilde y$").replace("ŷ", r"$\hat y$").replace("τ", r"$\tau$").replace("—", "--")


def to_latex(wide: pd.DataFrame, caption: str) -> str:
    """A frame as a booktabs LaTeX table with `caption`."""
    cols = list(wide.columns)
    lines = [
        r"\begin{table}[t]",
        r"\centering\small",
        rf"\caption{{{tex_escape(caption)}}}",
        r"\begin{tabular}{l" + "r" * (len(cols) - 1) + "}",
        r"\toprule",
        " & ".join(tex_escape(c) for c in cols) + r" \\",
        r"\midrule",
    ]
    lines += [" & ".join(tex_escape(v) for v in row) + r" \\" for row in wide.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"
