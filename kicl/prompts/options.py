"""The prompt protocol of one condition, resolved once: :class:`Protocol`.

A condition is a set of overrides of the ``protocol:`` section. :meth:`Protocol.from_config` fills the keys it lacks
from schemas/config.schema.yaml (the one place a default is written), checks the section against the schema and
then only what the schema cannot express (a band with lo >= hi, order_seed with a sorted order, ...), and raises
one :class:`~kicl.config.ConfigError` naming every ``protocol.<key>`` it cannot use.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from kicl.config import SectionOptions


@dataclass(frozen=True)
class Protocol(SectionOptions):
    """The effective ``protocol:`` of one condition (fields in schema order; meanings in the schema)."""

    seed: int
    n_demos: int
    demo_strategy: str
    retrieval_encoder: str
    retrieval_pool_size: int | None
    dedup_similarity: float
    n_select: int
    n_heldout: int
    readout: str
    context_policy: str
    max_length: int | None
    similarity_band: tuple[float, float]
    demo_order: str
    order_seed: int | None
    labels: str
    label_noise: float
    abstract_labels: tuple[str, ...]
    inputs: str
    other_task: str | None
    test_inputs: str
    typo_rate: float
    rare_word_rate: float
    rare_word_gap: float
    rewrites_file: str | None
    rewrite_type: str | None

    SECTION = "protocol"

    @classmethod
    def from_config(cls, config: Mapping, condition: str | None = None) -> Protocol:
        """``config["protocol"]`` (with the overrides of ``condition``, a name in ``config["conditions"]``) over
        the schema defaults, checked; raises ConfigError listing every problem."""
        if condition is not None:
            from kicl.conditions import condition_protocol

            config = {"protocol": condition_protocol(config, condition)}
        return super().from_config(config)

    @classmethod
    def build(cls, values: dict) -> Protocol:
        tuples = {key: tuple(values[key]) for key in ("similarity_band", "abstract_labels")}
        return cls(**values | tuples)

    def problems(self) -> list[str]:
        """What the schema cannot express, one line each naming the key."""
        problems = []
        lo, hi = self.similarity_band
        if not lo < hi:
            problems.append(f"protocol.similarity_band: {list(self.similarity_band)!r} is not [lo, hi] with lo < hi")
        if self.order_seed is not None and self.demo_order != "native":
            problems.append(
                f"protocol.order_seed {self.order_seed} permutes the native order; it cannot be combined with "
                f"protocol.demo_order {self.demo_order!r}"
            )
        if not all(word.strip() for word in self.abstract_labels):
            problems.append(f"protocol.abstract_labels: {list(self.abstract_labels)!r} has a blank word")
        if self.inputs == "other_task" and not self.other_task:
            problems.append("protocol.other_task: not set, but protocol.inputs is 'other_task' (name a task)")
        if self.test_inputs == "rewrites":
            problems += [
                f"protocol.{key}: not set, but protocol.test_inputs is 'rewrites'"
                for key in ("rewrites_file", "rewrite_type")
                if not getattr(self, key)
            ]
        return problems

    def task_problems(self, n_classes: int) -> list[str]:
        """What this protocol cannot do on a task with ``n_classes`` classes."""
        if self.labels == "abstract" and len(self.abstract_labels) < n_classes:
            return [
                f"protocol.abstract_labels: {len(self.abstract_labels)} words for a task with {n_classes} classes "
                "(one word per class)"
            ]
        return []

    def as_dict(self) -> dict:
        """The protocol as the plain dict that meta.json, the store attrs and the rule params hold (lists, not
        tuples; keys in schema order)."""
        return {
            key: list(value) if isinstance(value, tuple) else value for key, value in dataclasses.asdict(self).items()
        }
