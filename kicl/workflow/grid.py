"""The run grid: every (model, task, condition) cell of a run's forward stores, computed once from the config.

``rules/common.smk`` builds one :class:`RunGrid` and derives every target list and input function from it; the
theory_icl chain (its trained model on the world's task, in the reference condition) is one more cell, not a
special case.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass

from kicl.conditions import condition_tasks, decision_partner, selected_conditions

Cell = tuple[str, str, str]  # (model, task, condition)


@dataclass(frozen=True)
class RunGrid:
    """``cells``: run.models x each selected condition's tasks; ``pair``: the theory_icl chain's cell (or none);
    the conditions stage's conditions and tasks; the causal stage's tasks (both on the reference only)."""

    cells: tuple[Cell, ...]
    pair: tuple[Cell, ...]
    reference: str
    partner: str | None
    conditions: tuple[str, ...]
    stage_conditions: tuple[str, ...]
    stage_tasks: tuple[str, ...]
    causal_tasks: tuple[str, ...]

    @classmethod
    def from_config(cls, config: Mapping) -> RunGrid:
        """The grid of a checked config (kicl.workflow.checks.workflow_errors found nothing)."""
        run, reference = config["run"], config["conditions_stage"]["reference"]
        conditions, tasks_of = selected_conditions(config), condition_tasks(config)
        cells = [(m, t, c) for c in conditions for t in tasks_of[c] for m in run["models"]]
        chain = config["theory_icl"]
        pair = [(chain["chain"]["model"], chain["chain"]["task"], reference)] if chain["enabled"] else []
        stage_conditions = [c for c in conditions if c == reference or tasks_of[c]]
        stage_tasks = [t for t in config["conditions_stage"]["tasks"] if t in run["tasks"]]
        return cls(
            cells=tuple(cells),
            pair=tuple(pair),
            reference=reference,
            partner=decision_partner(config),
            conditions=tuple(conditions),
            stage_conditions=tuple(stage_conditions),
            stage_tasks=tuple(stage_tasks if len(stage_conditions) > 1 else ()),
            causal_tasks=tuple(t for t in config["causal"]["tasks"] if t in run["tasks"]),
        )

    @property
    def all_cells(self) -> tuple[Cell, ...]:
        """The grid's cells and the theory_icl cell."""
        return self.cells + self.pair

    @property
    def reference_cells(self) -> tuple[Cell, ...]:
        """The grid's cells of the reference condition."""
        return tuple(cell for cell in self.cells if cell[2] == self.reference)

    def tasks(self, model: str, condition: str) -> list[str]:
        """The tasks of a (model, condition): the condition's tasks; the world's task for the theory_icl model."""
        return [t for m, t, c in self.all_cells if m == model and c == condition]

    def names(self, position: int) -> list[str]:
        """The models (0), tasks (1) or conditions (2) of every cell, first seen first."""
        return list(dict.fromkeys(cell[position] for cell in self.all_cells))


def expand_cells(patterns, cells, encoders=()) -> list[str]:
    """``patterns`` (a path or a list) filled with each cell's model, task and condition and, where a pattern
    names ``{encoder}``, each encoder; without repeats, in order."""
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    files = [
        pattern.format(model=model, task=task, condition=condition, encoder=encoder)
        for (model, task, condition), pattern in itertools.product(cells, patterns)
        for encoder in (encoders if "{encoder}" in pattern else [None])
    ]
    return list(dict.fromkeys(files))
