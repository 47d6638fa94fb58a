"""Attention-free competitors of a head, fitted on one set of prompts and scored on another (the decision rule).

Every competitor predicts ŷ from the shown labels and their positions only, never from attention:

* ``constant``: the majority ŷ of the fitting prompts;
* ``vote``: the unweighted vote of the shown labels, ties by the fitted rule (kicl.analysis.votes);
* ``recency``: the last demonstration's label;
* ``position``: the head's mean kernel weight per slot on the fitting prompts, voted with each prompt's labels;
* ``label_sequence``: a conditional-logit model of ŷ on the label sequence, logit_k = b_k + Σ_d θ_d·1[y_d = k]
  + γ_k·count_k, fitted by L2-penalised Newton steps. It holds constant (θ = γ = 0), vote (θ_d equal), recency
  (θ on the last slot) and any position-only kernel (θ_d ∝ the slot profile) as special cases, so "beats the
  attention-free competitors" means beating the best function of the labels and their slots it can learn.

Fits take prompt multiplicities (R, P) so that R bootstrap resamples are fitted at once.
"""

from __future__ import annotations

import numpy as np

from kicl.analysis.baselines import last_demo_label
from kicl.analysis.votes import argmax_votes, is_tie, label_votes, tie_priority

COMPETITORS = ("constant", "vote", "recency", "position", "label_sequence")


def label_sequence_features(demo_label, n_labels: int) -> np.ndarray:
    """(P, K, F) class-wise features: class indicator (K), 1[y_d = k] per slot (D), label count (K)."""
    labels = np.asarray(demo_label)
    n, n_demos = labels.shape
    hit = (labels[:, None, :] == np.arange(n_labels)[None, :, None]).astype(np.float64)  # (P, K, D)
    eye = np.broadcast_to(np.eye(n_labels), (n, n_labels, n_labels))
    counts = eye * hit.sum(2, keepdims=True)
    return np.concatenate([eye, hit, counts], axis=2)


def fit_label_sequence(features, target, weights, l2: float = 1.0, iterations: int = 10, start=None) -> np.ndarray:
    """Coefficients (R, F) of the conditional logit for each row of prompt weights (R, P), by damped Newton
    (from `start` (R, F) if given: a nearby fit converges in a few steps)."""
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    used = w.any(0)  # prompts with weight somewhere: the others add nothing
    w, x, target = w[:, used], np.asarray(features, dtype=np.float64)[used], np.asarray(target)[used]
    n, n_classes, n_features = x.shape
    onehot = (target[:, None] == np.arange(n_classes)).astype(np.float64)  # (P, K)
    flat_x = x.reshape(n * n_classes, n_features)
    outer = np.einsum("qf,qg->qfg", flat_x, flat_x).reshape(n * n_classes, n_features * n_features)
    beta = np.zeros((len(w), n_features)) if start is None else np.array(start, dtype=np.float64)
    ridge = l2 * np.eye(n_features)
    for _ in range(iterations):
        logits = (beta @ flat_x.T).reshape(len(w), n, n_classes)
        prob = np.exp(logits - logits.max(2, keepdims=True))
        prob /= prob.sum(2, keepdims=True)
        mean_x = sum(prob[:, :, k, None] * x[None, :, k, :] for k in range(n_classes))  # (R, P, F)
        grad = (w[:, :, None] * (onehot - prob)).reshape(len(w), -1) @ flat_x - l2 * beta
        second = ((w[:, :, None] * prob).reshape(len(w), -1) @ outer).reshape(len(w), n_features, n_features)
        hess = second - (w[:, :, None] * mean_x).transpose(0, 2, 1) @ mean_x + ridge
        step = np.linalg.solve(hess, grad[..., None])[..., 0]
        norm = np.linalg.norm(step, axis=1, keepdims=True)
        beta += step * np.minimum(1.0, 5.0 / np.maximum(norm, 1e-12))
    return beta


def label_sequence_predict(features, beta) -> np.ndarray:
    """ŷ (R, P) of fitted coefficients (R, F) on prompts with `features` (P, K, F)."""
    return np.einsum("pkf,rf->rpk", np.asarray(features, dtype=np.float64), beta).argmax(2)


def rule_predictions(demo_label, pred, fit_weights, head_kw, n_labels: int) -> dict:
    """(R, P) predictions of constant, vote, recency and position on all prompts, fitted with `fit_weights`
    (R, P): zero weight = not a fitting prompt. `head_kw` (R, P, D): each resample's head's kernel weights."""
    w = np.atleast_2d(fit_weights)
    n_rows, n = w.shape
    priority = tie_priority(pred, n_labels, w)  # (R, K): one fitted rule per resample
    ones = np.where(np.asarray(demo_label) >= 0, 1.0, np.nan)
    votes = np.broadcast_to(label_votes(ones, demo_label, n_labels), (n_rows, n, n_labels))
    kw = np.where(np.isfinite(head_kw), head_kw, 0.0)
    present = np.isfinite(head_kw).astype(np.float64)
    slot_mean = np.einsum("rp,rpd->rd", w, kw) / np.maximum(np.einsum("rp,rpd->rd", w, present), 1e-12)
    onehot = (np.asarray(demo_label)[..., None] == np.arange(n_labels)).astype(np.float64)  # (P, D, K)
    return {
        "constant": np.repeat(priority.argmax(1)[:, None], n, 1),  # the majority ŷ (ties: lowest id)
        "vote": argmax_votes(votes, demo_label, priority[:, None, :]),
        "recency": np.broadcast_to(last_demo_label(demo_label), (n_rows, n)),
        "position": argmax_votes(np.einsum("rd,pdk->rpk", slot_mean, onehot), demo_label, priority[:, None, :]),
    }


def tie_rate(demo_label, n_labels: int) -> float:
    """Share of prompts whose unweighted label vote is tied."""
    votes = label_votes(np.where(np.asarray(demo_label) >= 0, 1.0, np.nan), demo_label, n_labels)
    return float(is_tie(votes).mean())
