"""Order, label and input controls of the demonstrations (issues 11 and 12), as pure functions of a chosen set.

The demonstration SET is chosen by the strategy with the per-test-point generator ``Generator([seed, test_index])``;
every control here draws from its own stream ``Generator([seed, test_index, STREAM, ...])`` (:func:`control_rng`),
so no control changes the chosen set, the draws of another control, or the test points.

* order (``protocol.demo_order``): ``native`` = the strategy's own order (random strategies keep their drawn order,
  ranking strategies ascending similarity); ``ascending``/``descending`` sort the chosen set by encoder cosine to the
  test input (stable: ties keep the native order); ``protocol.order_seed`` (an int) places the native-order set in a
  random permutation from ``Generator([seed, test_index, ORDER_STREAM, order_seed])``.
* labels (``protocol.labels``), each demonstration's shown label from its true label y among C classes:
  ``gold`` = y; ``flipped`` = (y + 1) mod C (binary: swapped); ``noisy`` = exactly round(p·k) demonstrations
  (round half up, p = ``protocol.label_noise``), chosen at random, get a wrong label drawn uniformly from the C - 1
  others; ``random`` = a label drawn uniformly from the C classes (may equal y); ``abstract`` = y shown with the
  abstract label words (the builder swaps the verbalizers).
* inputs (``protocol.inputs``): ``original``; ``permuted`` = the inputs permuted across the demonstrations by a
  random derangement (every input moves; k = 1 stays) while the label sequence stays in place; ``other_task`` =
  k distinct inputs drawn uniformly from another task's demonstration pool, labels kept.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kicl.config import schema_enum
from kicl.prompts.pieces import PromptError

DEMO_ORDERS = schema_enum("protocol", "demo_order")
LABEL_CONTROLS = schema_enum("protocol", "labels")

#: seed-stream tags of the controls (after [seed, test_index]); the strategy's generator is [seed, test_index]
ORDER_STREAM, LABEL_STREAM, INPUT_STREAM, TYPO_STREAM, RARE_WORD_STREAM = 101, 102, 103, 104, 105


def control_rng(seed: int, test_index: int, stream: int, *extra: int) -> np.random.Generator:
    """The generator of one control for one test point: ``Generator([seed, test_index, stream, *extra])``."""
    return np.random.default_rng([int(seed), int(test_index), int(stream), *map(int, extra)])


def round_half_up(value: float) -> int:
    """round() with halves rounded up (Python's round() rounds halves to even)."""
    return int(np.floor(value + 0.5))


# ---- order -------------------------------------------------------------------------------------------


def order_demos(
    chosen: Sequence, demo_order: str, similarity: Sequence[float] | None, permutation_rng: np.random.Generator | None
) -> list:
    """The chosen demonstrations (native order) placed in prompt order.

    ``similarity``: each chosen demonstration's encoder similarity to the test input (needed by ascending and
    descending); ``permutation_rng``: the order_seed generator (a random permutation of the native order).
    """
    chosen = list(chosen)
    if permutation_rng is not None:
        return [chosen[i] for i in permutation_rng.permutation(len(chosen))]
    if demo_order == "native":
        return chosen
    if demo_order not in ("ascending", "descending"):
        raise PromptError(f"protocol.demo_order {demo_order!r}: use one of {list(DEMO_ORDERS)}")
    if similarity is None or len(similarity) != len(chosen):
        raise PromptError(f"protocol.demo_order {demo_order!r} needs each demonstration's similarity to the test input")
    values = np.asarray(similarity, dtype=np.float64)
    order = np.argsort(values if demo_order == "ascending" else -values, kind="stable")
    return [chosen[i] for i in order]


# ---- labels ------------------------------------------------------------------------------------------


def control_labels(
    true_labels: Sequence[int], mode: str, n_classes: int, rng: np.random.Generator, label_noise: float = 0.0
) -> list[int]:
    """The label shown for each demonstration under the label control ``mode`` (see the module docstring)."""
    labels = [int(y) for y in true_labels]
    if mode in ("gold", "abstract"):
        return labels
    if mode == "flipped":
        return [(y + 1) % n_classes for y in labels]
    if mode == "random":
        return [int(y) for y in rng.integers(0, n_classes, size=len(labels))]
    if mode == "noisy":
        n_wrong = round_half_up(label_noise * len(labels))
        shown = list(labels)
        for position in rng.choice(len(labels), size=n_wrong, replace=False):
            offset = int(rng.integers(1, n_classes))  # 1..C-1: uniformly one of the other labels
            shown[position] = (labels[position] + offset) % n_classes
        return shown
    raise PromptError(f"protocol.labels {mode!r}: use one of {list(LABEL_CONTROLS)}")


# ---- inputs ------------------------------------------------------------------------------------------


def derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random permutation of range(n) with no fixed point (n >= 2; the identity for n < 2)."""
    if n < 2:
        return np.arange(n)
    while True:  # rejection sampling: a random permutation is a derangement with probability about 1/e
        permutation = rng.permutation(n)
        if not (permutation == np.arange(n)).any():
            return permutation


def permuted_positions(n: int, rng: np.random.Generator) -> np.ndarray:
    """Position j shows the input of demonstration ``permuted_positions[j]`` (a derangement where possible)."""
    return derangement(n, rng)


def other_task_rows(n: int, other_size: int, rng: np.random.Generator, other_task: str) -> np.ndarray:
    """Positions of n distinct rows of another task's pool (of ``other_size`` rows), drawn uniformly."""
    if n > other_size:
        raise PromptError(
            f"protocol.other_task {other_task!r}: {n} demonstration inputs requested but its pool has {other_size}"
        )
    return rng.choice(other_size, size=n, replace=False)
