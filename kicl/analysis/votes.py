"""The kernel vote of paper §5.2: ỹ = argmax_y Σ_i a_i · 1[y_i = y], for attention heads and for baselines.

a_i is a kernel weight per demonstration (a head's pooled attention, an encoder similarity, a constant, a
per-slot mean). Missing demonstrations (label −1, NaN weight) add nothing. Exact ties, including all-zero
votes, follow the tie rule `ties`:

* ``"fitted"`` (the default of `analysis.vote_ties`): the tied label the model predicts most often on the
  fitting prompts (`select`), an attention-free rule fitted like the constant baseline (vote → constant
  fallback). Callers with the fitting prompts at hand turn it into a priority array (`resolve_ties`);
* ``"lowest"``: the lowest label id (numpy argmax), which credits whichever class happens to have id 0;
* ``"recent"``: the tied label that occurs latest in the prompt.
"""

from __future__ import annotations

import numpy as np

TIES = ("fitted", "lowest", "recent")


def label_votes(kernel_weight: np.ndarray, demo_label: np.ndarray, n_labels: int) -> np.ndarray:
    """Votes (P, ..., K) = Σ_d kernel_weight[p, ..., d] · 1[demo_label[p, d] = k]."""
    weights = np.nan_to_num(np.asarray(kernel_weight, dtype=np.float64), nan=0.0)
    onehot = (np.asarray(demo_label)[..., None] == np.arange(n_labels)).astype(np.float64)
    return np.einsum("p...d,pdk->p...k", weights, onehot)


def last_occurrence(demo_label: np.ndarray, n_labels: int) -> np.ndarray:
    """(P, K): the last demonstration slot carrying label k, −1 where no demonstration does."""
    labels = np.asarray(demo_label)
    slots = np.arange(labels.shape[1])
    hit = labels[:, :, None] == np.arange(n_labels)
    return np.where(hit, slots[None, :, None], -1).max(1)


def tie_priority(predictions, n_labels: int, weights=None) -> np.ndarray:
    """The fitted tie rule: (K,) priority of each label = how often the model predicts it on the fitting prompts
    (`predictions`, −1 ignored), with a small bonus for lower ids so that the order is total. With prompt
    multiplicities `weights` (R, P): one rule per row, (R, K)."""
    predictions = np.asarray(predictions, dtype=int)
    onehot = (predictions[:, None] == np.arange(n_labels)).astype(np.float64)  # −1 matches no label
    counts = onehot.sum(0) if weights is None else np.atleast_2d(weights) @ onehot
    return counts - np.arange(n_labels) / (n_labels + 1.0)


def resolve_ties(ties, select_predictions, n_labels: int):
    """The tie rule to hand to `argmax_votes`: "fitted" becomes the priority fitted on `select_predictions`."""
    if isinstance(ties, str) and ties == "fitted":
        return tie_priority(select_predictions, n_labels)
    return ties


def is_tie(votes: np.ndarray) -> np.ndarray:
    """Whether the largest vote of each row (last axis) is shared by two or more labels."""
    best = votes.max(-1, keepdims=True)
    return np.isclose(votes, best, rtol=1e-12, atol=1e-12).sum(-1) > 1


def argmax_votes(votes: np.ndarray, demo_label: np.ndarray, ties="lowest") -> np.ndarray:
    """argmax over the last axis of `votes` (P, ..., K) with the tie rule `ties`: "lowest", "recent", or a
    priority array over the K labels that broadcasts against `votes` (see the module docstring; "fitted" must be
    turned into one by `tie_priority`)."""
    if isinstance(ties, str) and ties == "lowest":
        return votes.argmax(-1)
    best = votes.max(-1, keepdims=True)
    tied = np.isclose(votes, best, rtol=1e-12, atol=1e-12)
    if not isinstance(ties, str):
        priority = np.asarray(ties, dtype=np.float64)
        if priority.shape[-1:] != votes.shape[-1:]:
            raise ValueError(f"a tie priority needs one value per label ({votes.shape[-1]}), got {priority.shape}")
        return np.where(tied, priority, -np.inf).argmax(-1)
    if ties == "fitted":
        raise ValueError("vote ties 'fitted' need the fitting prompts' predictions: pass tie_priority(...) instead")
    if ties != "recent":
        raise ValueError(f"analysis.vote_ties must be one of {TIES}, got {ties!r}")
    last = last_occurrence(demo_label, votes.shape[-1]).astype(np.float64)
    last = last.reshape(last.shape[:1] + (1,) * (votes.ndim - 2) + last.shape[1:])
    return np.where(tied, last, -np.inf).argmax(-1)


def reconstruct(kernel_weight: np.ndarray, demo_label: np.ndarray, n_labels: int, ties="lowest") -> np.ndarray:
    """ỹ per prompt (and per pooling/layer/head when those axes are present)."""
    return argmax_votes(label_votes(kernel_weight, demo_label, n_labels), demo_label, ties)


def permute_within_prompts(demo_label: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Demonstration labels shuffled among the present demonstrations of each prompt (missing ones stay −1)."""
    labels = np.asarray(demo_label)
    present = labels >= 0
    order = np.argsort(~present, axis=1, kind="stable")  # present slots in prompt order, then missing
    shuffled = np.argsort(np.where(present, rng.random(labels.shape), np.inf), axis=1)  # present slots, random
    out = np.empty_like(labels)
    rows = np.arange(labels.shape[0])[:, None]
    out[rows, order] = labels[rows, shuffled]
    return out
