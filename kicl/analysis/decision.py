"""The decision rule (docs/decision-rule.md): per (model, task, condition), does the kernel reading hold?

Cross-fitting: the store's two splits are two folds. On each fold the head whose vote agrees most with ŷ is
chosen, the attention-free competitors (kicl.analysis.competitors) are fitted, and the best of them is chosen
(the label-sequence model by inner cross-validation, the fixed rules in-fold); both are then scored on the other
fold. Every prompt is thus scored held-out, and n is the whole store. A nested bootstrap (prompts resampled
within each fold, every choice and fit repeated) gives the 1 − 2α intervals that the criteria read; they are
bias-corrected (BC), because a competitor refitted on a resample (~63% distinct prompts) is weaker than the one
fitted on all prompts, which shifts the resampled Δ upward — in the head's favour — if left uncorrected:

* **advantage**: Δ = agreement(head) − agreement(best competitor) with ŷ. Met if the interval lies above 0
  and does not lie inside ±margin; missed if it lies below 0 or inside ±margin (two one-sided tests); else open.
* **label invariance** (kicl.analysis.invariance): the selected head's residual correlation between gold and
  flipped shown labels. Met if the interval lies at or above the threshold; missed if below it; else open.

Verdict: *supports* if every criterion is met, *contradicts* if any is missed, else *undecided*; an undecided
advantage carries its minimum detectable difference and the prompts that would decide it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from kicl.analysis import stats
from kicl.analysis.competitors import (
    COMPETITORS,
    fit_label_sequence,
    label_sequence_features,
    label_sequence_predict,
    rule_predictions,
    tie_rate,
)
from kicl.analysis.invariance import align_partner, correlation, cross_products, residual_weights
from kicl.analysis.reconstruction import head_predictions
from kicl.analysis.votes import reconstruct, resolve_ties
from kicl.store.reader import label_names, open_store, string_values

MET, MISSED, OPEN = "met", "missed", "open"


@dataclass(frozen=True)
class DecisionRule:
    """`analysis.decision` less `partner` (meaning and defaults: schemas/config.schema.yaml, the one source)."""

    margin: float
    alpha: float
    power: float
    invariance_threshold: float
    n_boot: int
    seed: int
    inner_folds: int
    l2: float

    @classmethod
    def from_config(cls, section: dict) -> DecisionRule:
        """The rule from a whole `analysis.decision` section (a validated config has every key)."""
        missing = [f.name for f in fields(cls) if f.name not in section]
        if missing:
            raise ValueError(f"analysis.decision lacks {', '.join(missing)} (schemas/config.schema.yaml has defaults)")
        return cls(**{f.name: section[f.name] for f in fields(cls)})


@dataclass
class DecisionData:
    """Per-prompt arrays of one store (P prompts, M = layer × head heads, D slots)."""

    yt: np.ndarray  # (P, M) each head's vote
    kw: np.ndarray  # (P, M, D) kernel weights of the rule's pooling
    demo_label: np.ndarray  # (P, D)
    pred: np.ndarray  # (P,) ŷ
    fold: np.ndarray  # (P,) 0 = select, 1 = heldout
    n_labels: int
    n_heads: int  # heads per layer
    products: np.ndarray | None = None  # (3, P, M) invariance cross-products, None without a partner


def load_decision_data(store, pooling: str, partner=None, ties="fitted") -> DecisionData:
    """Arrays of a forward store and, if given, the cross-products with its label-flip partner store."""
    needs = ["kernel_weight", "demo_label", "prediction", "split", "test_index"]
    ds = open_store(store, needs=needs)
    n_labels, prompts = len(label_names(ds)), np.arange(ds.sizes["prompt"])
    kw = ds["kernel_weight"].sel(pooling=pooling).values.astype(np.float64)
    data = DecisionData(
        yt=head_predictions(ds, prompts, [pooling], ties=ties)[:, 0].reshape(len(prompts), -1),
        kw=kw.reshape(len(prompts), -1, kw.shape[-1]),
        demo_label=ds["demo_label"].values,
        pred=ds["prediction"].values,
        fold=(string_values(ds["split"]) == "heldout").astype(int),
        n_labels=n_labels,
        n_heads=ds.sizes["head"],
    )
    if partner is not None:
        flip = open_store(partner, needs=needs)
        rows = align_partner(ds["test_index"].values, flip["test_index"].values)
        kw_flip = flip["kernel_weight"].sel(pooling=pooling).values.astype(np.float64)[rows]
        gold_res = residual_weights(data.kw, data.demo_label, data.pred, n_labels)
        flip_res = residual_weights(
            kw_flip.reshape(data.kw.shape), flip["demo_label"].values[rows], flip["prediction"].values[rows], n_labels
        )
        data.products = cross_products(gold_res, flip_res)
    return data


def _label_sequence(d: DecisionData, features, fit_w, rule: DecisionRule, inner_ids):
    """(R, P) label-sequence predictions fitted on fit_w, and (R,) its inner cross-validated agreement."""
    beta = fit_label_sequence(features, d.pred, fit_w, rule.l2)
    hits, total = np.zeros(len(fit_w)), np.zeros(len(fit_w))
    for j in range(rule.inner_folds):
        held = inner_ids == j
        inner = fit_label_sequence(features, d.pred, fit_w * ~held, rule.l2, iterations=4, start=beta)
        ok = label_sequence_predict(features[held], inner) == d.pred[held]
        hits += (fit_w[:, held] * ok).sum(1)
        total += fit_w[:, held].sum(1)
    return label_sequence_predict(features, beta), hits / np.maximum(total, 1e-12)


def _fit_fold(d: DecisionData, counts, f: int, rule: DecisionRule, features, inner_ids) -> dict:
    """Choices and predictions fitted on fold f with multiplicities counts (R, P)."""
    fit_w = counts * (d.fold == f)
    agree = fit_w @ (d.yt == d.pred[:, None]).astype(np.float64)  # (R, M)
    head = agree.argmax(1)
    preds = rule_predictions(d.demo_label, d.pred, fit_w, d.kw[:, head, :].transpose(1, 0, 2), d.n_labels)
    share = fit_w.sum(1)
    scores = {name: (fit_w * (p == d.pred)).sum(1) / share for name, p in preds.items()}
    preds["label_sequence"], scores["label_sequence"] = _label_sequence(d, features, fit_w, rule, inner_ids)
    names = list(COMPETITORS)
    best = np.stack([scores[n] for n in names], 1).argmax(1)  # (R,), first name on ties
    competitor = np.stack([preds[n] for n in names], 0)[best, np.arange(len(best))]
    return {"head": head, "competitor": best, "head_pred": d.yt[:, head].T, "competitor_pred": competitor}


def crossfit(d: DecisionData, counts, rule: DecisionRule) -> dict:
    """Cross-fitted statistics for each row of prompt multiplicities counts (R, P)."""
    features = label_sequence_features(d.demo_label, d.n_labels)
    inner_ids = np.random.default_rng(rule.seed).permutation(len(d.pred)) % rule.inner_folds
    fits = [_fit_fold(d, counts, f, rule, features, inner_ids) for f in (0, 1)]
    scored_by = 1 - d.fold  # a prompt of fold f is scored by the fit of the other fold
    pick = lambda key: np.where(scored_by == 0, fits[0][key], fits[1][key])  # noqa: E731
    head_ok, comp_ok = pick("head_pred") == d.pred, pick("competitor_pred") == d.pred
    total = counts.sum(1)
    out = {
        "head_agreement": (counts * head_ok).sum(1) / total,
        "competitor_agreement": (counts * comp_ok).sum(1) / total,
        "discordance": (counts * (head_ok != comp_ok)).sum(1) / total,
        "heads": np.stack([fit["head"] for fit in fits], 1),
        "competitors": np.stack([fit["competitor"] for fit in fits], 1),
    }
    out["difference"] = out["head_agreement"] - out["competitor_agreement"]
    if d.products is not None:
        heads = np.where(scored_by == 0, fits[0]["head"][:, None], fits[1]["head"][:, None])  # (R, P)
        chosen = np.take_along_axis(d.products[:, None, :, :], heads[None, :, :, None], axis=3)[..., 0]
        sums = (counts[None] * chosen).sum(2)
        out["invariance"] = sums[0] / np.sqrt(np.maximum(sums[1] * sums[2], 1e-300))
    return out


def stratified_counts(fold, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, P) multiplicities: prompts resampled with replacement within each fold."""
    rng = np.random.default_rng(seed)
    counts = np.zeros((n_boot, len(fold)))
    for f in (0, 1):
        members = np.flatnonzero(fold == f)
        counts[:, members] = stats.bootstrap_counts(rng, len(members), n_boot)
    return counts


def advantage_status(low: float, high: float, margin: float) -> str:
    if high < 0 or stats.equivalence(low, high, margin):
        return MISSED
    return MET if low > 0 else OPEN


def invariance_status(low: float, high: float, threshold: float) -> str:
    if high < threshold:
        return MISSED
    return MET if low >= threshold else OPEN


def decision_of(statuses) -> str:
    statuses = list(statuses)
    if MISSED in statuses:
        return "contradicts"
    return "supports" if all(s == MET for s in statuses) else "undecided"


def prompts_to_decide(delta: float, discordance: float, rule: DecisionRule) -> float:
    """Prompts at which the observed Δ (if true) would be told from 0 or shown to lie within ±margin."""
    routes = [rule.margin - abs(delta)] + ([abs(delta)] if abs(delta) > 0 else [])
    return min(stats.prompts_needed(discordance, r, 2 * rule.alpha, rule.power) for r in routes if r > 0)


def decide(d: DecisionData, rule: DecisionRule) -> dict:
    """The rule's numbers, criteria and decision for one store (and its partner, if loaded)."""
    point = crossfit(d, np.ones((1, len(d.pred))), rule)
    boot = crossfit(d, stratified_counts(d.fold, rule.n_boot, rule.seed), rule)
    level = 1 - 2 * rule.alpha
    n = len(d.pred)
    delta, discordance = float(point["difference"][0]), float(point["discordance"][0])
    low, high = stats.bias_corrected_interval(boot["difference"], delta, level)
    result = {
        "n": n,
        "heads": [divmod(int(h), d.n_heads) for h in point["heads"][0]],
        "head_stability": float((boot["heads"] == point["heads"]).all(1).mean()),
        "competitors": [COMPETITORS[int(c)] for c in point["competitors"][0]],
        "head_agreement": float(point["head_agreement"][0]),
        "competitor_agreement": float(point["competitor_agreement"][0]),
        "difference": delta,
        "difference_low": low,
        "difference_high": high,
        "p_value": stats.bias_corrected_p(boot["difference"], delta),
        "discordance": discordance,
        "mdd": stats.mdd(discordance, n, 2 * rule.alpha, rule.power),
        "n_to_decide": prompts_to_decide(delta, discordance, rule),
        "tie_rate": tie_rate(d.demo_label, d.n_labels),
        "advantage": advantage_status(low, high, rule.margin),
    }
    statuses = [result["advantage"]]
    if d.products is None:
        result.update(invariance=np.nan, invariance_low=np.nan, invariance_high=np.nan, label_invariance=OPEN)
        result["invariance_n_to_decide"] = np.nan
    else:
        invariance = float(point["invariance"][0])
        inv_low, inv_high = stats.bias_corrected_interval(boot["invariance"], invariance, level)
        result.update(invariance=invariance, invariance_low=inv_low, invariance_high=inv_high)
        result["label_invariance"] = invariance_status(inv_low, inv_high, rule.invariance_threshold)
        distance = abs(result["invariance"] - rule.invariance_threshold)  # interval width shrinks as 1/√n
        half = (inv_high - inv_low) / 2
        result["invariance_n_to_decide"] = float(np.ceil(n * (half / distance) ** 2)) if distance > 0 else np.inf
    statuses.append(result["label_invariance"])
    result["decision"] = decision_of(statuses)
    return result


def span_weights(attention, start, end) -> np.ndarray:
    """(P, D) max of attention rows (P, T) over each demonstration's positions start..end-1; NaN if absent."""
    positions = np.arange(attention.shape[1])
    inside = (positions >= start[..., None]) & (positions < end[..., None])  # (P, D, T)
    values = np.where(inside, np.nan_to_num(attention)[:, None, :], -np.inf).max(2)
    return np.where(start >= 0, values, np.nan)


def where_it_looks(store, heads, ties="fitted") -> dict:
    """Diagnostic: cross-fitted agreement with ŷ of the selected heads (one per fold, as chosen by the rule) when
    their weight is read from the input span alone (max over x_i) or from the label token alone."""
    needs = ["attention", "input_start", "input_end", "label_pos", "demo_label", "prediction", "split"]
    ds = open_store(store, needs=needs)
    labels, pred = ds["demo_label"].values, ds["prediction"].values
    scored_by = (string_values(ds["split"]) != "heldout").astype(int)  # select prompts are scored by fold 1's head
    n_labels = len(label_names(ds))
    ties = resolve_ties(ties, pred[scored_by == 1], n_labels)
    label_pos = ds["label_pos"].values
    out = {"input_span": np.zeros(len(pred), bool), "label_token": np.zeros(len(pred), bool)}
    for fold, (layer, head) in enumerate(heads):
        rows = np.flatnonzero(scored_by == fold)
        att = ds["attention"].isel(prompt=rows, layer=layer, head=head).values.astype(np.float64)
        start, end = ds["input_start"].values[rows], ds["input_end"].values[rows]
        for name, (a, b) in {"input_span": (start, end), "label_token": (label_pos[rows], label_pos[rows] + 1)}.items():
            vote = reconstruct(span_weights(att, np.where(start >= 0, a, -1), b), labels[rows], n_labels, ties)
            out[name][rows] = vote == pred[rows]
    return {f"agreement_{name}": float(ok.mean()) for name, ok in out.items()}


def head_invariance(d: DecisionData) -> np.ndarray:
    """(M,) every head's residual label-invariance correlation over all prompts (NaN without a partner)."""
    if d.products is None:
        return np.full(d.yt.shape[1], np.nan)
    return correlation(d.products)[0]
