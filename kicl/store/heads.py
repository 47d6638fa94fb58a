"""One attention head's identifier, written the same way (``L{layer}H{head}``) in every CSV and caption, so tables
from different stages join on it."""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass

_LABEL = re.compile(r"L(\d+)H(\d+)")


@dataclass(frozen=True, order=True)
class HeadId:
    """A head by its layer and its index within the layer (both from 0)."""

    layer: int
    head: int

    def __post_init__(self):  # numpy integers become ints; a float is a TypeError
        object.__setattr__(self, "layer", operator.index(self.layer))
        object.__setattr__(self, "head", operator.index(self.head))

    @property
    def label(self) -> str:
        """``L{layer}H{head}``, e.g. ``L3H7``."""
        return f"L{self.layer}H{self.head}"

    def __str__(self) -> str:
        return self.label

    @classmethod
    def parse(cls, label: str) -> HeadId:
        """The head of a label ``L{layer}H{head}``; anything else is a ValueError naming it."""
        match = _LABEL.fullmatch(str(label).strip())
        if not match:
            raise ValueError(f"head label {label!r} is not of the form L<layer>H<head> (e.g. L3H7)")
        return cls(int(match[1]), int(match[2]))

    @classmethod
    def from_flat(cls, flat: int, n_heads: int) -> HeadId:
        """The head at a flat (layer-major) index over layers x ``n_heads`` heads."""
        layer, head = divmod(int(flat), int(n_heads))
        return cls(layer, head)
