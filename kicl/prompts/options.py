"""The prompt protocol of one condition: schema defaults filled in, every value checked, errors naming the key.

A condition is a set of overrides of the ``protocol:`` section; the prompt builder receives the merged dict.
:func:`effective_protocol` fills the keys it lacks from schemas/config.schema.yaml (the one place a default is
written) and raises :class:`~kicl.prompts.pieces.PromptError` naming ``protocol.<key>`` for a value it cannot use,
including the combinations the schema cannot express (a band with lo >= hi, order_seed with a sorted order, ...).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

from kicl.prompts.controls import DEMO_ORDERS, INPUT_CONTROLS, LABEL_CONTROLS
from kicl.prompts.ood import TEST_INPUTS
from kicl.prompts.pieces import PromptError


@functools.lru_cache(maxsize=1)
def protocol_defaults() -> dict:
    """The schema's defaults of the ``protocol:`` section."""
    from kicl.config import defaults_for

    return defaults_for("protocol")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _fraction(protocol: Mapping, key: str) -> None:
    value = protocol[key]
    if not _is_number(value) or not 0 <= value <= 1:
        raise PromptError(f"protocol.{key}: {value!r} is not a number in [0, 1]")


def effective_protocol(protocol: Mapping, strategies: Mapping, n_classes: int | None = None) -> dict:
    """``protocol`` over the schema defaults, checked (``strategies``: the registered demonstration strategies)."""
    defaults = protocol_defaults()
    unknown = sorted(set(protocol) - set(defaults))
    if unknown:
        raise PromptError(f"protocol.{unknown[0]}: unknown key (known: {', '.join(sorted(defaults))})")
    merged = dict(defaults) | dict(protocol)
    if not _is_int(merged["n_demos"]) or merged["n_demos"] < 0:
        raise PromptError(f"protocol.n_demos: {merged['n_demos']!r} is not a non-negative integer")
    if merged["demo_strategy"] not in strategies:
        raise PromptError(
            f"protocol.demo_strategy {merged['demo_strategy']!r} is unknown; available: {sorted(strategies)}"
        )
    band = merged["similarity_band"]
    if (
        not isinstance(band, list | tuple)
        or len(band) != 2
        or not all(_is_number(v) for v in band)
        or not 0 <= band[0] < band[1] <= 1
    ):
        raise PromptError(f"protocol.similarity_band: {band!r} is not [lo, hi] with 0 <= lo < hi <= 1")
    if merged["demo_order"] not in DEMO_ORDERS:
        raise PromptError(f"protocol.demo_order: {merged['demo_order']!r} is not one of {list(DEMO_ORDERS)}")
    order_seed = merged["order_seed"]
    if order_seed is not None:
        if not _is_int(order_seed) or order_seed < 0:
            raise PromptError(f"protocol.order_seed: {order_seed!r} is not null or a non-negative integer")
        if merged["demo_order"] != "native":
            raise PromptError(
                f"protocol.order_seed {order_seed} permutes the native order; it cannot be combined with "
                f"protocol.demo_order {merged['demo_order']!r}"
            )
    if merged["labels"] not in LABEL_CONTROLS:
        raise PromptError(f"protocol.labels: {merged['labels']!r} is not one of {list(LABEL_CONTROLS)}")
    _fraction(merged, "label_noise")
    words = merged["abstract_labels"]
    if not isinstance(words, list | tuple) or not all(isinstance(w, str) and w.strip() for w in words):
        raise PromptError(f"protocol.abstract_labels: {words!r} is not a list of non-empty words")
    if len(set(words)) != len(words):
        raise PromptError(f"protocol.abstract_labels: {list(words)} has repeated words")
    if merged["labels"] == "abstract" and n_classes is not None and len(words) < n_classes:
        raise PromptError(
            f"protocol.abstract_labels: {len(words)} words for a task with {n_classes} classes (one word per class)"
        )
    if merged["inputs"] not in INPUT_CONTROLS:
        raise PromptError(f"protocol.inputs: {merged['inputs']!r} is not one of {list(INPUT_CONTROLS)}")
    if merged["inputs"] == "other_task" and not merged["other_task"]:
        raise PromptError("protocol.other_task: not set, but protocol.inputs is 'other_task' (name a task)")
    if merged["test_inputs"] not in TEST_INPUTS:
        raise PromptError(f"protocol.test_inputs: {merged['test_inputs']!r} is not one of {list(TEST_INPUTS)}")
    _fraction(merged, "typo_rate")
    _fraction(merged, "rare_word_rate")
    if not _is_number(merged["rare_word_gap"]) or merged["rare_word_gap"] < 0:
        raise PromptError(f"protocol.rare_word_gap: {merged['rare_word_gap']!r} is not a non-negative number")
    if merged["test_inputs"] == "rewrites":
        for key in ("rewrites_file", "rewrite_type"):
            if not merged[key]:
                raise PromptError(f"protocol.{key}: not set, but protocol.test_inputs is 'rewrites'")
    return merged
