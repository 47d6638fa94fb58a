"""Label invariance: is a head's kernel weight a function of the inputs, or of the label words?

The same demonstrations, in the same order, for the same test points, once with gold labels and once with every
shown label flipped (the `flipped_labels` condition). A kernel over the inputs, a_i = K(x_i, x_test), keeps its
weights; a head that reads the label words (a label anchor, an answer-readout head attending to demonstrations
that carry ŷ) moves them. Before correlating, each condition's weights are residualised within prompt on

* slot indicators (a position-only head must not pass on its position profile alone),
* shown-label indicators and 1[y_i = ŷ] of that condition (a head keyed on the label words, or on agreement
  with the answer, must not pass because the flip moves ŷ along with the labels),

so the statistic is the within-prompt correlation of what is left: the part of a_i that depends on the
demonstration's content. Per-prompt cross-products are kept so that prompts can be resampled.
"""

from __future__ import annotations

import numpy as np


def _design(demo_label, pred, n_labels: int) -> np.ndarray:
    """(P, D, F) covariates of each (prompt, demonstration): slot, shown label, 1[y_i = ŷ]."""
    labels = np.asarray(demo_label)
    n, n_demos = labels.shape
    slot = np.broadcast_to(np.eye(n_demos), (n, n_demos, n_demos))
    label = (labels[..., None] == np.arange(n_labels)).astype(np.float64)
    match = (labels == np.asarray(pred)[:, None]).astype(np.float64)[..., None]
    return np.concatenate([slot, label, match], axis=2)


def _within_prompt(values, present) -> np.ndarray:
    """Demean along the demonstration axis (axis 1) over present demonstrations; absent -> 0."""
    values = np.where(present[..., None] if values.ndim == 3 else present, values, 0.0)
    count = np.maximum(present.sum(1), 1)
    mean = values.sum(1) / count.reshape((-1,) + (1,) * (values.ndim - 2))
    centred = values - np.expand_dims(mean, 1)
    return np.where(present[..., None] if values.ndim == 3 else present, centred, 0.0)


def residual_weights(kernel_weight, demo_label, pred, n_labels: int, adjust: bool = True) -> np.ndarray:
    """(P, M, D) within-prompt residuals of kernel weights (P, M, D) after the covariates (module docstring);
    `adjust=False` only centres within prompt. Absent demonstrations are 0."""
    kw = np.asarray(kernel_weight, dtype=np.float64)
    present = np.asarray(demo_label) >= 0
    n, n_heads, n_demos = kw.shape
    values = _within_prompt(np.nan_to_num(kw.transpose(0, 2, 1)), present)  # (P, D, M)
    if adjust:
        x = _within_prompt(_design(demo_label, pred, n_labels), present).reshape(n * n_demos, -1)
        y = values.reshape(n * n_demos, n_heads)
        beta = np.linalg.lstsq(x, y, rcond=None)[0]
        values = (y - x @ beta).reshape(n, n_demos, n_heads) * present[..., None]
    return values.transpose(0, 2, 1)


def cross_products(gold_residual, flipped_residual) -> np.ndarray:
    """(3, P, M) per-prompt sums Σ_i e·f, Σ_i e², Σ_i f² of two residual arrays (P, M, D)."""
    e, f = gold_residual, flipped_residual
    return np.stack([(e * f).sum(2), (e * e).sum(2), (f * f).sum(2)])


def correlation(products, weights=None) -> np.ndarray:
    """Pooled correlation per head from cross-products (3, P, M) and prompt weights (R, P) -> (R, M)."""
    w = np.ones((1, products.shape[1])) if weights is None else np.atleast_2d(weights)
    sums = np.einsum("rp,spm->srm", w, products)
    return sums[0] / np.sqrt(np.maximum(sums[1] * sums[2], 1e-300))


def align_partner(test_index, partner_test_index) -> np.ndarray:
    """Rows of the partner store in the order of `test_index`; a clear error when test points differ."""
    position = {int(t): i for i, t in enumerate(partner_test_index)}
    missing = [int(t) for t in test_index if int(t) not in position]
    if missing:
        raise ValueError(
            f"the label-flip partner store lacks {len(missing)} test points of the reference (e.g. test_index "
            f"{missing[:3]}); both conditions must share their test points (same seed, n_select, n_heldout)"
        )
    return np.array([position[int(t)] for t in test_index])
