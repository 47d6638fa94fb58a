"""The ``theory_icl:`` config section, resolved once: :class:`TheoryICLOptions` (meanings and defaults in the schema).

Built like every section (:func:`kicl.config.section_values`: schema defaults, the section's schema check), then only
the checks the schema cannot express (:meth:`TheoryICLOptions.problems`); one ConfigError lists every problem.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from kicl.config import SectionOptions


@dataclass(frozen=True)
class WorldOptions:
    """``theory_icl.world``: the label world."""

    seed: int
    n_tasks: int
    n_states: int
    n_content: int
    n_labels: int
    mix: float
    alpha_trans: float
    emit_noise: float
    label_noise: float
    min_len: int
    max_len: int
    x_len: int


@dataclass(frozen=True)
class ModelOptions:
    """``theory_icl.model``: the transformer (random init)."""

    architecture: str
    n_layer: int
    n_embd: int
    n_head: int
    ctx: int
    activation: str


@dataclass(frozen=True)
class TrainOptions:
    """``theory_icl.train``: AdamW over a token budget."""

    seed: int
    tokens: int
    batch_size: int
    lr: float
    final_lr_ratio: float
    warmup: int
    weight_decay: float
    label_loss_weight: float
    attention: str
    threads: int
    autocast: str
    log_every: int


@dataclass(frozen=True)
class EvalOptions:
    """``theory_icl.eval``: the comparison against n."""

    seed: int
    n_demos: tuple[int, ...]
    n_select: int
    n_heldout: int
    n_sigma: int
    ridge: float
    batch_size: int
    n_boot: int
    level: float


@dataclass(frozen=True)
class ChainOptions:
    """``theory_icl.chain``: the trained model and one world task through the chain."""

    model: str
    task: str
    task_index: int
    n_eval: int
    n_demo_pool: int


@dataclass(frozen=True)
class TheoryICLOptions(SectionOptions):
    """The whole ``theory_icl:`` section."""

    enabled: bool
    world: WorldOptions
    model: ModelOptions
    train: TrainOptions
    eval: EvalOptions
    chain: ChainOptions

    SECTION = "theory_icl"

    @classmethod
    def build(cls, values: dict) -> TheoryICLOptions:
        return cls(
            enabled=values["enabled"],
            world=WorldOptions(**values["world"]),
            model=ModelOptions(**values["model"]),
            train=TrainOptions(**values["train"]),
            eval=EvalOptions(**values["eval"] | {"n_demos": tuple(values["eval"]["n_demos"])}),
            chain=ChainOptions(**values["chain"]),
        )

    def problems(self) -> list[str]:
        """Inconsistencies the schema cannot express, one line each naming the keys."""
        world, model = self.world, self.model
        problems = []
        if world.n_content % world.n_states:
            problems.append(
                f"theory_icl.world.n_content ({world.n_content}) must be a multiple of "
                f"theory_icl.world.n_states ({world.n_states})"
            )
        if world.n_states % world.n_labels:
            problems.append(
                f"theory_icl.world.n_states ({world.n_states}) must be a multiple of "
                f"theory_icl.world.n_labels ({world.n_labels}) for a balanced labelling"
            )
        if world.min_len > world.max_len:
            problems.append(f"theory_icl.world.min_len ({world.min_len}) exceeds max_len ({world.max_len})")
        if model.n_embd % model.n_head:
            problems.append(f"theory_icl.model.n_embd ({model.n_embd}) is not a multiple of n_head ({model.n_head})")
        longest = 1 + max(self.eval.n_demos) * (world.x_len + 3) + world.x_len + 1
        if longest > model.ctx:
            problems.append(
                f"theory_icl.model.ctx ({model.ctx}) cannot hold the longest evaluation prompt "
                f"({longest} tokens for max(theory_icl.eval.n_demos) = {max(self.eval.n_demos)})"
            )
        if not 0 <= self.chain.task_index < world.n_tasks:
            problems.append(
                f"theory_icl.chain.task_index ({self.chain.task_index}) is not a task of the world "
                f"(0 … {world.n_tasks - 1})"
            )
        return problems

    def as_dict(self) -> dict:
        """The section as plain nested dicts (lists, not tuples), as the trained model's kicl_training.json keeps it."""
        plain = dataclasses.asdict(self)
        plain["eval"]["n_demos"] = list(plain["eval"]["n_demos"])
        return plain
