"""The causal stage's figure: accuracy, ŷ flips and margin change against k, per mode and ranking, with
the rank p-value of the top-k effect among the random draws beside each top-k point."""

from __future__ import annotations

import pandas as pd

from kicl.analysis.causal import METRICS, summarise
from kicl.figures.style import BASELINE_COLORS, MAIN_COLOR, figure_style, log2_axis, plt, save_figure

RANKING_STYLE = {
    "top": (MAIN_COLOR, "o", "top-k (select-prompt rank)"),
    "random": (BASELINE_COLORS[0], "s", "random k, layer-matched (mean of draws)"),
    "bottom": (BASELINE_COLORS[1], "^", "bottom-k"),
}
LABELS = {"accuracy": "ICL accuracy", "flip_share": "share of ŷ flipped", "margin_change": "Δ label-logit margin"}


def draw(summary: pd.DataFrame, png, title: str = "") -> None:
    """Rows = metrics, columns = modes; lines per ranking with their intervals (random: draw range dotted),
    the top-k points labelled with their rank p-value."""
    with figure_style():
        _draw(summary, png, title)


def _draw(summary: pd.DataFrame, png, title: str) -> None:
    modes = [m for m in ("zero", "mean", "knockout") if m in set(summary["mode"])]
    base = summary[summary.ranking == "none"]
    fig, axes = plt.subplots(
        len(METRICS), len(modes), figsize=(max(5.0, 3.2 * len(modes)), 2.4 * len(METRICS)), squeeze=False, sharex=True
    )
    for col, mode in enumerate(modes):
        for row, metric in enumerate(METRICS):
            ax = axes[row, col]
            for ranking, (color, marker, label) in RANKING_STYLE.items():
                part = summary[(summary["mode"] == mode) & (summary.ranking == ranking)].sort_values("k")
                if part.empty:
                    continue
                ks = part["k"].values
                ax.plot(ks, part[metric], marker=marker, color=color, label=label)
                ax.fill_between(ks, part[f"{metric}_lo"], part[f"{metric}_hi"], color=color, alpha=0.2, lw=0)
                if ranking == "random":
                    ax.vlines(ks, part[f"{metric}_draw_min"], part[f"{metric}_draw_max"], color=color, ls=":")
                if ranking == "top" and f"{metric}_rank_p" in part:
                    for k, value, p in zip(ks, part[metric], part[f"{metric}_rank_p"], strict=True):
                        if p == p:  # not NaN
                            ax.annotate(f"p={p:.2g}", (k, value), textcoords="offset points", xytext=(3, 4),
                                        fontsize=7, color=color)  # fmt: skip
            if metric == "accuracy" and not base.empty:
                ax.axhline(float(base["accuracy"].iloc[0]), color="black", lw=0.8, ls="--", label="no ablation")
            log2_axis(ax, sorted(int(k) for k in summary.loc[summary.k > 0, "k"].unique()))
            if row == 0:
                ax.set_title(mode)
            if row == len(METRICS) - 1:
                ax.set_xlabel("k heads ablated")
            if col == 0:
                ax.set_ylabel(LABELS[metric])
    axes[0, 0].legend(loc="best")
    level = int(round(100 * float(summary["level"].iloc[0])))
    draws = summary.loc[summary.ranking == "random", "n_draws"]
    fig.suptitle(
        f"{title}\nbands {level}%: top/bottom bootstrap over prompts (flips: Wilson)\nrandom: mean of "
        f"{int(draws.max()) if len(draws) else 0} draws, two-level bootstrap (draws, prompts), dotted: their range"
        "\np: rank of the top-k effect among the draws' paired effects",
        fontsize=8,
    )
    save_figure(fig, png)


def causal_figure(
    prompts_csv, png, csv, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95, title: str = ""
) -> pd.DataFrame:
    """Summarise the per-prompt ablation table into ``csv`` and draw it into ``png``."""
    frame = pd.read_csv(prompts_csv)
    summary = summarise(frame, n_boot=n_boot, seed=seed, level=level)
    summary.to_csv(csv, index=False, float_format="%.6g")
    draw(summary, png, title=title)
    return summary


__all__ = ["causal_figure", "draw"]
