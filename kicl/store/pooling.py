"""From one prompt's last-row attention to the store's kernel weights, and where keys/values are gathered.

Used by the capture (on real attention rows) and by the synthetic stores (on planted ones), so both follow
the same definition of the ``kernel_weight`` variable (docs/store.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# The ``pooling`` coordinate of the store, in this order.
POOLINGS = ("max", "mean", "sum", "label")


def kernel_weights(attention: np.ndarray, input_start: np.ndarray, label_pos: np.ndarray) -> np.ndarray:
    """(layers, heads, length) attention row -> (pooling, layers, heads, demo) kernel weights, float32.

    Per demonstration: max, mean and sum of the attention over positions ``input_start .. label_pos``
    inclusive, and the attention on ``label_pos`` alone (the order of ``POOLINGS``). NaN for demonstrations
    marked missing (start < 0).
    """
    attention = np.asarray(attention)
    input_start, label_pos = np.asarray(input_start), np.asarray(label_pos)
    if attention.ndim != 3:
        raise ValueError(f"attention must be (layer, head, position), got shape {attention.shape}")
    if input_start.shape != label_pos.shape:
        raise ValueError(f"input_start {input_start.shape} and label_pos {label_pos.shape} differ in shape")
    n_layers, n_heads, _ = attention.shape
    out = np.full((len(POOLINGS), n_layers, n_heads, len(input_start)), np.nan, np.float32)
    for demo, (start, label) in enumerate(zip(input_start.tolist(), label_pos.tolist())):
        if start < 0:
            continue
        span = attention[:, :, start : label + 1]
        out[0, :, :, demo] = span.max(-1)
        out[1, :, :, demo] = span.mean(-1)
        out[2, :, :, demo] = span.sum(-1)
        out[3, :, :, demo] = attention[:, :, label]
    return out


def kv_positions(
    label_pos: Sequence[int], offsets: Sequence[int], length: int, n_demos: int
) -> tuple[np.ndarray, np.ndarray]:
    """Positions ``label_pos + offset`` per (demo, offset), clipped into the prompt, and where they are valid.

    Returns the flattened (n_demos * len(offsets)) positions, each inside 0 .. length-1 so that it can be
    gathered, and a (n_demos, len(offsets)) mask that is False for offsets outside the prompt and for demo
    slots the prompt does not have (beyond ``len(label_pos)``); those entries are stored as NaN.
    """
    positions = np.full((n_demos, len(offsets)), -1, np.int64)
    if len(label_pos):
        positions[: len(label_pos)] = np.asarray(label_pos)[:, None] + np.asarray(offsets)[None, :]
    valid = (positions >= 0) & (positions < length)
    if n_demos > len(label_pos):
        valid[len(label_pos) :] = False
    return np.clip(positions, 0, length - 1).reshape(-1), valid
