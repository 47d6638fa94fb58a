"""Numbers of the causal stage (issue 13): the head ranking it ablates by, and the summary of its per-prompt
table (kicl.capture.causal).

The ranking (``head_ranking``, the ``causal_ranking`` rule): every head scored on the ``select`` prompts alone
(never the held-out ones the ablation is scored on) by how well its kernel-regression reconstruction ỹ (one
pooling) matches ŷ: raw agreement (the paper's Fig 3 score) or Cohen's κ (``causal.rank_by``); best first, ties
in (layer, head) order.

The summary, from the per-prompt table:

Per (mode, ranking, k): ICL accuracy, share of prompts whose ŷ flips and mean change of the label-logit margin.
Intervals: top, bottom and no ablation (one head set each): percentile bootstrap over held-out prompts for
accuracy and margin, Wilson for the flip share (never the degenerate [0, 0] of a percentile interval). Random
(R layer-matched draws): the mean over draws with a two-level bootstrap (draws resampled, then prompts), the
flip share widened to at least the Wilson interval of the draw-averaged flips; the per-draw range as
``*_draw_min``/``*_draw_max``.

The test, on the top rows: each head set's paired effect on the same prompts, e = mean(metric − metric without
ablation); ``*_vs_random`` = e_top − mean over draws of e_r with its two-level interval (the same prompt
resamples for both); ``*_rank_p`` = (1 + #{e_r at least as harmful as e_top})/(1 + R) (kicl.analysis.stats.
rank_p: lower accuracy and margin, more flips), and ``*_rank_p_holm`` Holm-adjusted over the (mode, k) rows.
The no-ablation row has ranking ``none`` and k = 0. ``off_layer``: random heads drawn outside their layer.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from kicl.analysis.reconstruction import head_predictions
from kicl.analysis.stats import (
    bootstrap_mean,
    holm,
    percentile_interval,
    rank_p,
    two_level_bootstrap,
    wilson_interval,
)
from kicl.config import schema_enum
from kicl.fileio import write_csv_atomic
from kicl.store.heads import HeadId
from kicl.store.reader import open_store, string_values

METRICS = {"accuracy": "correct", "flip_share": "flipped", "margin_change": "margin_change"}
#: the direction in which ablating heads the model uses moves each metric (the rank p-value's alternative)
HARMFUL = {"accuracy": "less", "flip_share": "greater", "margin_change": "less"}
KEYS = ["mode", "ranking", "k"]
RANK_BY = schema_enum("causal", "rank_by")
#: the columns of head_ranking.csv, one row per head, best first
RANKING_COLUMNS = ["rank", "head_id", "layer", "head", "score", "pooling", "rank_by"]


def rank_heads(scores: np.ndarray) -> list[tuple[int, int]]:
    """(layer, head) from the highest score to the lowest; ties in (layer, head) order."""
    n_layers, n_heads = scores.shape
    flat = np.asarray(scores, dtype=np.float64).reshape(-1)
    order = np.lexsort((np.arange(flat.size), -flat))
    return [(int(i // n_heads), int(i % n_heads)) for i in order]


def cohen_kappa(y_tilde: np.ndarray, y_hat: np.ndarray) -> np.ndarray:
    """Cohen's κ of each head's ỹ (P, ...) against ŷ (P,): agreement beyond what the two label marginals give
    by chance (0 when ŷ or ỹ is constant), so a head that always names the majority label scores 0."""
    y_tilde, y_hat = np.asarray(y_tilde), np.asarray(y_hat)
    labels = np.union1d(np.unique(y_tilde), np.unique(y_hat))
    hat = y_hat.reshape((-1,) + (1,) * (y_tilde.ndim - 1))
    observed = (y_tilde == hat).mean(0)
    chance = sum((y_tilde == y).mean(0) * (y_hat == y).mean() for y in labels)
    with np.errstate(divide="ignore", invalid="ignore"):
        kappa = (observed - chance) / (1 - chance)
    return np.where(chance < 1, kappa, 0.0)


def head_scores(ds, select, pooling: str, rank_by: str) -> np.ndarray:
    """(layer, head) ranking scores of the ``select`` prompts alone: raw agreement of ỹ with ŷ (the paper's
    Fig 3 score) or Cohen's κ against ŷ."""
    select = np.sort(np.asarray(select, dtype=int))
    y_tilde = head_predictions(ds, select, [pooling])[:, 0]
    y_hat = ds["prediction"].values[select]
    if rank_by == "agreement":
        return (y_tilde == y_hat[:, None, None]).mean(0)
    if rank_by == "kappa":
        return cohen_kappa(y_tilde, y_hat)
    raise ValueError(f"causal.rank_by: {rank_by!r} is not one of {RANK_BY}")


def head_ranking(store, pooling: str, rank_by: str) -> pd.DataFrame:
    """Every head of the forward store ``store``, best first (RANKING_COLUMNS), scored on its select prompts."""
    ds = open_store(store, needs=["kernel_weight", "demo_label", "prediction", "split"])
    select = np.flatnonzero(string_values(ds["split"]) == "select")
    if not len(select):
        raise ValueError(f"{store}: the causal ranking needs select prompts (protocol.n_select)")
    scores = head_scores(ds, select, pooling, rank_by)
    ranked = rank_heads(scores)
    return pd.DataFrame(
        {
            "rank": np.arange(1, len(ranked) + 1),
            "head_id": [HeadId(*h).label for h in ranked],
            "layer": [layer for layer, _ in ranked],
            "head": [head for _, head in ranked],
            "score": [float(scores[h]) for h in ranked],
            "pooling": pooling,
            "rank_by": rank_by,
        }
    )


def write_head_ranking(store, csv, pooling: str, rank_by: str) -> pd.DataFrame:
    """head_ranking.csv of the causal stage (see head_ranking)."""
    frame = head_ranking(store, pooling, rank_by)
    write_csv_atomic(frame, csv, index=False)
    return frame


def paired_effects(frame: pd.DataFrame) -> pd.DataFrame:
    """The ablated rows with one ``effect_<metric>`` column per metric: the value minus the value without
    ablation on the same prompt."""
    none = frame[frame["ranking"] == "none"].drop_duplicates("prompt").set_index("prompt")
    rest = frame[frame["ranking"] != "none"].copy()
    missing = set(rest["prompt"]) - set(none.index)
    if missing:
        raise ValueError(f"ablation table: prompts {sorted(missing)[:5]} have no no-ablation row")
    for name, column in METRICS.items():
        rest[f"effect_{name}"] = rest[column].to_numpy(float) - none.loc[rest["prompt"], column].to_numpy(float)
    return rest


def _draw_matrix(group: pd.DataFrame, column: str) -> np.ndarray:
    """(draws, prompts) values of one (mode, ranking, k) group, prompts in sorted order."""
    return group.pivot(index="draw", columns="prompt", values=column).sort_index(axis=1).to_numpy(float)


def _set_row(group: pd.DataFrame, n_boot: int, seed: int, level: float) -> dict:
    """Value and interval of every metric for one head set (top, bottom, none)."""
    row = {}
    for name, column in METRICS.items():
        values = group.sort_values("prompt")[column].to_numpy(float)
        if name == "flip_share":
            low, high = wilson_interval(values.sum(), len(values), level)
            row[name], row[f"{name}_lo"], row[f"{name}_hi"] = values.mean(), low, high
        else:
            row[name], row[f"{name}_lo"], row[f"{name}_hi"] = bootstrap_mean(
                values, n_boot=n_boot, seed=seed, level=level
            )
    return row


def _random_row(group: pd.DataFrame, n_boot: int, seed: int, level: float) -> dict:
    """Mean over draws of every metric, two-level interval, per-draw range."""
    row = {}
    for name, column in METRICS.items():
        matrix = _draw_matrix(group, column)
        means, _ = two_level_bootstrap(matrix, n_boot, seed)
        low, high = percentile_interval(means, level)
        if name == "flip_share":
            wilson = wilson_interval(matrix.mean(0).sum(), matrix.shape[1], level)
            low, high = min(low, wilson[0]), max(high, wilson[1])
        per_draw = matrix.mean(1)
        row[name], row[f"{name}_lo"], row[f"{name}_hi"] = float(matrix.mean()), low, high
        row[f"{name}_draw_min"], row[f"{name}_draw_max"] = float(per_draw.min()), float(per_draw.max())
    return row


def top_vs_random_row(top: pd.DataFrame, random: pd.DataFrame, n_boot: int, seed: int, level: float) -> dict:
    """The paired test of one (mode, k): per metric e_top, mean e_r, their difference with its two-level
    interval, and the rank p-value of e_top among the draws' e_r."""
    row = {"random_draws": int(random["draw"].nunique())}
    top = top.sort_values("prompt")
    if not np.array_equal(top["prompt"].to_numpy(), np.sort(random["prompt"].unique())):
        raise ValueError("ablation table: the top and random rows are not on the same prompts")
    for name in METRICS:
        per_draw = _draw_matrix(random, f"effect_{name}")
        top_effects = top[f"effect_{name}"].to_numpy(float)
        random_means, top_means = two_level_bootstrap(per_draw, n_boot, seed, paired=top_effects)
        effect, draw_effects = float(top_effects.mean()), per_draw.mean(1)
        row[f"{name}_effect"], row[f"{name}_random_effect"] = effect, float(draw_effects.mean())
        row[f"{name}_vs_random"] = effect - float(draw_effects.mean())
        row[f"{name}_vs_random_lo"], row[f"{name}_vs_random_hi"] = percentile_interval(top_means - random_means, level)
        row[f"{name}_rank_p"] = rank_p(effect, draw_effects, HARMFUL[name])
    return row


def summarise(frame: pd.DataFrame, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> pd.DataFrame:
    """One row per (mode, ranking, k) with value, lo, hi of every metric; the top rows carry the test against
    the random draws (see the module docstring)."""
    missing = {"mode", "ranking", "k", "draw", "prompt", *METRICS.values()} - set(frame.columns)
    if missing:
        raise ValueError(f"ablation table lacks columns {sorted(missing)}")
    frame = frame.assign(off_layer=frame.get("off_layer", 0))
    none = frame[frame["ranking"] == "none"]
    effects = paired_effects(frame)
    rows = []
    for (mode, ranking, k), group in pd.concat([none, effects]).groupby(KEYS, sort=True):
        row = {"mode": mode, "ranking": ranking, "k": int(k), "n_prompts": int(group["prompt"].nunique())}
        row["n_draws"] = int(group["draw"].nunique())
        row["off_layer"] = int(group.drop_duplicates("draw")["off_layer"].sum())
        pick = _random_row if ranking == "random" else _set_row
        row.update(pick(group, n_boot, seed, level))
        if ranking == "top":
            random = effects[(effects["mode"] == mode) & (effects["ranking"] == "random") & (effects["k"] == k)]
            if len(random):
                row.update(top_vs_random_row(group, random, n_boot, seed, level))
        rows.append(row)
    out = pd.DataFrame(rows)
    if "random_draws" in out:
        out["random_draws"] = out["random_draws"].astype("Int64")
    for name in METRICS:
        column = f"{name}_rank_p"
        if column in out:
            out[f"{column}_holm"] = holm(out[column].to_numpy(float))
    out["level"] = level
    return out


def top_vs_random(summary: pd.DataFrame, metric: str = "accuracy") -> pd.DataFrame:
    """Per (mode, k): the top-k and mean random-k paired effects of ``metric``, their difference with its
    two-level interval, the rank p-value (raw and Holm-adjusted) and the number of draws."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {list(METRICS)}, got {metric!r}")
    top = summary[summary["ranking"] == "top"]
    columns = ["mode", "k", "random_draws", "n_prompts"] + [
        f"{metric}{suffix}"
        for suffix in ("_effect", "_random_effect", "_vs_random", "_vs_random_lo", "_vs_random_hi", "_rank_p",
                       "_rank_p_holm")
    ]  # fmt: skip
    return top[[c for c in columns if c in top]].reset_index(drop=True)
