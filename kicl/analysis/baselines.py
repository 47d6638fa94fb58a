"""Attention-free baselines for Fig 3 and Table 2: what a head-free predictor scores on the same prompts.

Every baseline predicts a label per prompt; it is scored as agreement with the ICL prediction ŷ and as
accuracy against gold, like a head's reconstruction ỹ. Fitted quantities come from the `select` prompts
only (never from the prompts they are scored on):

* ``constant``: the majority ŷ on select, predicted for every prompt (ties: lowest label id);
* ``gold_majority``: the majority gold label on select;
* ``vote``: the unweighted vote of the prompt's demonstration labels (a constant kernel a_i ≡ 1); ties by
  `analysis.vote_ties` (default ``fitted``: the tied label the model predicts most often on select; see
  kicl.analysis.votes; ``lowest`` credits whichever class has id 0);
* ``recency``: the label of the prompt's last demonstration;
* ``position``: a position-only kernel per head, a_i = the head's mean kernel weight at demonstration slot i
  over the select prompts, voted with the prompt's own labels (its content removed, its recency kept).

Metrics beside accuracy: balanced accuracy (mean recall over the reference classes present) and macro-F1
(mean F1 over the classes present in the reference or the prediction); `resampled_classification_scores`
gives them per bootstrap resample (prompt multiplicities as weights), for intervals.
"""

from __future__ import annotations

import numpy as np

from kicl.analysis.votes import reconstruct, resolve_ties

BASELINES = ("constant", "gold_majority", "vote", "recency", "position")
#: fixed-rule baselines (one prediction per prompt, no head involved)
FIXED_BASELINES = BASELINES[:4]
BASELINE_LABELS = {
    "constant": "constant ŷ (majority prediction on select)",
    "gold_majority": "gold-majority class (on select)",
    "vote": "unweighted vote of the demonstration labels",
    "recency": "the last demonstration's label",
    "position": "position-only kernel of the head",
}


def majority(labels, n_labels: int) -> int:
    """The most frequent label (ties: lowest label id)."""
    labels = np.asarray(labels, dtype=int)
    labels = labels[labels >= 0]
    if labels.size == 0:
        raise ValueError("no labels to take a majority of (no select prompts? protocol.n_select)")
    return int(np.bincount(labels, minlength=n_labels).argmax())


def last_demo_label(demo_label) -> np.ndarray:
    """Label of the last present demonstration of each prompt (−1 for a prompt without demonstrations)."""
    labels = np.asarray(demo_label)
    present = labels >= 0
    last = np.where(present.any(1), labels.shape[1] - 1 - np.argmax(present[:, ::-1], axis=1), 0)
    return np.where(present.any(1), labels[np.arange(len(labels)), last], -1)


def fixed_predictions(demo_label, n_labels: int, *, select_prediction, select_gold, ties: str = "lowest") -> dict:
    """Per-prompt predictions {name: (P,)} of the four fixed-rule baselines for prompts with `demo_label`."""
    demo_label = np.asarray(demo_label)
    n = len(demo_label)
    ties = resolve_ties(ties, select_prediction, n_labels)
    return {
        "constant": np.full(n, majority(select_prediction, n_labels)),
        "gold_majority": np.full(n, majority(select_gold, n_labels)),
        "vote": reconstruct(np.where(demo_label >= 0, 1.0, np.nan), demo_label, n_labels, ties),
        "recency": last_demo_label(demo_label),
    }


def position_kernel(kernel_weight_select) -> np.ndarray:
    """Mean kernel weight per demonstration slot over select prompts: (P, ..., D) -> (..., D); empty slot -> 0."""
    kw = np.asarray(kernel_weight_select, dtype=np.float64)
    if kw.shape[0] == 0:
        raise ValueError("no select prompts to fit the position-only kernel on (protocol.n_select)")
    present = np.isfinite(kw)
    total = np.where(present, kw, 0.0).sum(0)
    count = present.sum(0)
    return np.divide(total, count, out=np.zeros_like(total), where=count > 0)


def position_predictions(weights, demo_label, n_labels: int, ties: str = "lowest") -> np.ndarray:
    """ỹ of the position-only kernel `weights` (..., D) for prompts with `demo_label` (P, D) -> (P, ...)."""
    demo_label = np.asarray(demo_label)
    weights = np.asarray(weights, dtype=np.float64)
    kw = np.broadcast_to(weights, (len(demo_label),) + weights.shape)
    return reconstruct(kw, demo_label, n_labels, ties)


def classification_scores(pred, ref, n_labels: int) -> dict:
    """Accuracy, balanced accuracy and macro-F1 of `pred` against `ref` (1-D label arrays)."""
    pred, ref = np.asarray(pred, dtype=int), np.asarray(ref, dtype=int)
    if pred.shape != ref.shape or pred.size == 0:
        raise ValueError(f"need two equally long, non-empty label arrays, got {pred.shape} and {ref.shape}")
    classes = np.arange(n_labels)
    tp = ((pred[:, None] == classes) & (ref[:, None] == classes)).sum(0)
    n_ref = (ref[:, None] == classes).sum(0)
    n_pred = (pred[:, None] == classes).sum(0)
    in_ref = n_ref > 0
    seen = in_ref | (n_pred > 0)
    f1 = np.divide(2 * tp, n_ref + n_pred, out=np.zeros(n_labels), where=seen)
    return {
        "accuracy": float((pred == ref).mean()),
        "balanced_accuracy": float((tp[in_ref] / n_ref[in_ref]).mean()),
        "macro_f1": float(f1[seen].mean()),
    }


def resampled_classification_scores(pred, ref, n_labels: int, weights) -> dict:
    """Accuracy, balanced accuracy and macro-F1 per bootstrap resample: `pred` (R, P) or (P,), `ref` (P,) and
    `weights` (R, P) = how often each prompt is drawn in resample r -> {metric: (R,)}. With all weights 1 this is
    classification_scores; classes absent from a resample's reference (and prediction) are left out as there."""
    ref = np.asarray(ref, dtype=int)
    weights = np.asarray(weights, dtype=np.float64)
    pred = np.broadcast_to(np.asarray(pred, dtype=int), weights.shape)
    if weights.ndim != 2 or weights.shape[1] != ref.size or ref.size == 0:
        raise ValueError(f"need weights (R, P) and a non-empty ref (P,), got {weights.shape} and {ref.shape}")
    classes = np.arange(n_labels)
    is_ref = (ref[:, None] == classes).astype(np.float64)  # (P, K)
    is_pred = pred[..., None] == classes  # (R, P, K)
    n_ref = weights @ is_ref  # (R, K)
    n_pred = np.einsum("rp,rpk->rk", weights, is_pred)
    tp = np.einsum("rp,rpk->rk", weights, is_pred * is_ref[None])
    in_ref, seen = n_ref > 0, (n_ref > 0) | (n_pred > 0)
    recall = np.divide(tp, n_ref, out=np.zeros_like(tp), where=in_ref)
    f1 = np.divide(2 * tp, n_ref + n_pred, out=np.zeros_like(tp), where=seen)
    return {
        "accuracy": (weights * (pred == ref)).sum(1) / weights.sum(1),
        "balanced_accuracy": recall.sum(1) / in_ref.sum(1),
        "macro_f1": f1.sum(1) / seen.sum(1),
    }


def demo_label_matrix(records) -> np.ndarray:
    """(P, D) demonstration labels of prompt records (kicl.prompts.files), −1 where a prompt has fewer demos."""
    n_demos = max((len(rec["demos"]) for rec in records), default=0)
    out = np.full((len(records), n_demos), -1, dtype=np.int64)
    for p, rec in enumerate(records):
        for d, demo in enumerate(rec["demos"]):
            out[p, d] = int(demo["label"])
    return out


def prompt_file_baselines(records, n_labels: int, split: str = "heldout", ties: str = "lowest") -> list[dict]:
    """The baselines that need no language model (gold majority on select, vote, recency), scored against gold
    on the `split` prompts of a prompt file: one row per baseline with accuracy, balanced accuracy, macro-F1."""
    splits = np.array([rec["split"] for rec in records])
    gold = np.array([int(rec["gold"]) for rec in records])
    labels = demo_label_matrix(records)
    scored = splits == split
    if not scored.any():
        raise ValueError(f"the prompt file has no '{split}' prompts")
    preds = fixed_predictions(
        labels[scored],
        n_labels,
        select_prediction=gold[splits == "select"],
        select_gold=gold[splits == "select"],
        ties=ties,
    )
    rows = []
    for name in ("gold_majority", "vote", "recency"):
        rows.append(
            {
                "baseline": name,
                "split": split,
                "n": int(scored.sum()),
                **classification_scores(preds[name], gold[scored], n_labels),
            }
        )
    return rows
