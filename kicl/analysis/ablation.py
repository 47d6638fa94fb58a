"""Numbers of the causal head-ablation test (issue 13) from the per-prompt table of kicl.capture.ablation.

Per (mode, ranking, k): ICL accuracy, share of prompts whose ŷ flips, mean change of the label-logit margin,
each with a percentile-bootstrap interval over held-out prompts. For ``random`` the per-prompt values are first
averaged over the draws (the interval is over prompts) and the spread of the per-draw values is given as
``*_draw_min``/``*_draw_max``. The no-ablation row has ranking ``none`` and k = 0.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

METRICS = {"accuracy": "correct", "flip_share": "flipped", "margin_change": "margin_change"}
KEYS = ["mode", "ranking", "k"]


def bootstrap_mean(values: np.ndarray, n_boot: int, seed: int, level: float) -> tuple[float, float]:
    """Percentile interval of the mean of ``values`` (resampled with replacement)."""
    values = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(axis=1)
    tail = (1 - level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def summarise(frame: pd.DataFrame, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> pd.DataFrame:
    """One row per (mode, ranking, k) with value, lo, hi (and draw spread) of every metric."""
    missing = {"mode", "ranking", "k", "draw", "prompt", *METRICS.values()} - set(frame.columns)
    if missing:
        raise ValueError(f"ablation table lacks columns {sorted(missing)}")
    rows = []
    for (mode, ranking, k), group in frame.groupby(KEYS, sort=True):
        per_prompt = group.groupby("prompt")[list(METRICS.values())].mean()
        per_draw = group.groupby("draw")[list(METRICS.values())].mean()
        row = {
            "mode": mode,
            "ranking": ranking,
            "k": int(k),
            "n_prompts": len(per_prompt),
            "n_draws": int(group["draw"].nunique()),
        }
        for name, column in METRICS.items():
            row[name] = float(per_prompt[column].mean())
            row[f"{name}_lo"], row[f"{name}_hi"] = bootstrap_mean(per_prompt[column].values, n_boot, seed, level)
            row[f"{name}_draw_min"] = float(per_draw[column].min())
            row[f"{name}_draw_max"] = float(per_draw[column].max())
        rows.append(row)
    out = pd.DataFrame(rows)
    out["level"] = level
    return out


def top_vs_random(summary: pd.DataFrame, metric: str = "accuracy") -> pd.DataFrame:
    """Per (mode, k): the top-k value, the random-k value and whether their intervals are apart
    (``separated``: top's interval lies wholly below random's for accuracy/margin, above for flips)."""
    top = summary[summary.ranking == "top"].set_index(["mode", "k"])
    rnd = summary[summary.ranking == "random"].set_index(["mode", "k"])
    joined = top[[metric, f"{metric}_lo", f"{metric}_hi"]].join(
        rnd[[metric, f"{metric}_lo", f"{metric}_hi"]], rsuffix="_random", how="inner"
    )
    if metric == "flip_share":
        joined["separated"] = joined[f"{metric}_lo"] > joined[f"{metric}_hi_random"]
    else:
        joined["separated"] = joined[f"{metric}_hi"] < joined[f"{metric}_lo_random"]
    return joined.reset_index()
