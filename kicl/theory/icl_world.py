"""A mixture-of-HMM world with a label alphabet, for pre-training a transformer and testing its ICL exactly.

This is the documented variant of the ``theory:`` world described in ``/work/shared/notes/tiny-icl-feasibility.md``
§1 (the paper's Assumption 1: a delimiter resets the hidden state). It is used instead of the block world of
:mod:`kicl.theory.hmm` because it has a small label alphabet, so a head's label vote (Fig 3) and the chain's
verbalizer readout are well defined, and because the tasks share states and emissions, so the demonstrations
(not the test input alone) have to identify the task.

* S hidden states, shared start distribution π (Dirichlet(1)) and content emission B (S × V): state s owns a
  block of V/S content tokens with mass 1 − ε_B (Dirichlet(1) inside the block), plus ε_B uniform over all V.
* Task θ (K tasks, uniform prior): transition T_θ = (1 − λ) T_shared + λ T_own,θ, rows Dirichlet(α_T); label
  emission G_θ (S × C): a balanced random labelling of the states (state → label), with noise ε_G.
* A segment is ℓ content tokens (ℓ ~ U{min_len..max_len}, independent of everything), the answer marker, one
  label token y ~ G_θ(s_ℓ) (emitted by the state of the last content token) and the delimiter, which resets
  the state (the next segment starts from s_1 ~ π). A pre-training document is one task θ ~ U(K) and
  segments until the context is full. The marker is deterministic and ℓ does not depend on θ, so neither
  changes any posterior; the marker gives the chain's templates their non-empty ``output_prefix``.

Token ids of the model: 0 = delimiter (also the BOS), 1 = answer marker, 2 … 1 + C = labels, then the V
content tokens, then ``<unk>`` and ``<pad>``. Text form: " |", " ->", " y{c}", " o{v}", every symbol with its
leading space, so prompt pieces tokenise and decode back to themselves.

Exact quantities (forward algorithm over the S shared states, per task): α_1 ∝ π ∘ B[:, x_1],
α_{t+1} = (α_t T_θ) ∘ B[:, x_{t+1}], so α_k(s) = P(x, s_k = s | θ); P(x, y | θ) = α_k · G_θ[:, y]. Given θ the
delimited demonstrations are independent, so the posterior predictive is
P(y | prompt) ∝ Σ_θ π_θ Π_i P(x_i, y_i | θ) · P(x_test, y | θ) (:func:`kicl.theory.posterior.posterior_from_weights`).
The Eq. 6 features are φ(x)[θ, s] = P(x, s_k = s | θ) / P(x | p_pretrain): P(x, y | θ) / P(x | p) =
Σ_s φ[θ, s] G_θ[s, y] is linear in φ, as in the block world, so the kernel estimator of
:mod:`kicl.theory.kernel` is unbiased for the task-known P(y | x_test, θ*) here too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kicl.theory.icl_options import TheoryICLOptions, WorldOptions

DELIMITER, MARKER, FIRST_LABEL = 0, 1, 2


@dataclass(frozen=True)
class LabelWorld:
    """A mixture of K label HMMs over S shared hidden states."""

    start: np.ndarray  # (S,) π
    emission: np.ndarray  # (S, V) content emission B
    transition: np.ndarray  # (K, S, S) T_θ
    labelling: np.ndarray  # (K, S, C) G_θ

    @property
    def n_tasks(self) -> int:
        return self.transition.shape[0]

    @property
    def n_states(self) -> int:
        return self.start.shape[0]

    @property
    def n_content(self) -> int:
        return self.emission.shape[1]

    @property
    def n_labels(self) -> int:
        return self.labelling.shape[2]

    @property
    def task_prior(self) -> np.ndarray:
        return np.full(self.n_tasks, 1.0 / self.n_tasks)

    # ---- token ids and text
    def label_ids(self) -> np.ndarray:
        return FIRST_LABEL + np.arange(self.n_labels)

    def content_ids(self, content: np.ndarray) -> np.ndarray:
        """Model token ids of content symbols 0 … V − 1."""
        return FIRST_LABEL + self.n_labels + np.asarray(content)

    @property
    def vocab_size(self) -> int:
        return FIRST_LABEL + self.n_labels + self.n_content + 2  # + <unk>, <pad>

    def symbols(self) -> list[str]:
        """Text of every token id, in id order (leading spaces included)."""
        return (
            [" |", " ->"]
            + [f" y{c}" for c in range(self.n_labels)]
            + [f" o{v}" for v in range(self.n_content)]
            + ["<unk>", "<pad>"]
        )

    def input_text(self, content: np.ndarray) -> str:
        """One input x as text without its leading space (the template's input_prefix " " supplies it)."""
        return " ".join(f"o{int(v)}" for v in content)


#: the three samplers of the theory comparison and their child of ``SeedSequence(seed).spawn(3)``
SEED_STREAMS = {"world": 0, "test_points": 1, "corpus": 2}


def seeded_stream(seed: int, stream: str) -> np.random.Generator:
    """The generator of one sampler (:data:`SEED_STREAMS`): child ``SEED_STREAMS[stream]`` of
    ``numpy.random.SeedSequence(seed).spawn(3)``. The world, the test points and the pre-training corpus draw
    independent streams even when their config seeds are equal (they used to share ``default_rng(0)``'s stream, so
    e.g. the first batch's document tasks equalled the first test tasks; every number changed once with this)."""
    return np.random.default_rng(np.random.SeedSequence(int(seed)).spawn(3)[SEED_STREAMS[stream]])


def world_from_config(world: WorldOptions) -> LabelWorld:
    """The world of the ``theory_icl.world`` config section, drawn from ``seeded_stream(seed, "world")``."""
    keys = ("n_tasks", "n_states", "n_content", "n_labels", "mix", "alpha_trans", "emit_noise", "label_noise")
    return make_label_world(seeded_stream(world.seed, "world"), **{key: getattr(world, key) for key in keys})


# shape: one keyword per key of the theory_icl.world config section (each a parameter of the draw, with its default)
def make_label_world(
    rng: np.random.Generator,
    n_tasks: int = 6,
    n_states: int = 12,
    n_content: int = 24,
    n_labels: int = 4,
    mix: float = 0.25,
    alpha_trans: float = 0.15,
    emit_noise: float = 0.1,
    label_noise: float = 0.1,
) -> LabelWorld:
    """Draw a random label world (module docstring; the feasibility note's §1 defaults)."""
    if n_content % n_states:
        raise ValueError(f"n_content ({n_content}) must be a multiple of n_states ({n_states}) (one block each)")
    if n_states % n_labels:
        raise ValueError(f"n_states ({n_states}) must be a multiple of n_labels ({n_labels}) for a balanced labelling")
    block = n_content // n_states
    start = rng.dirichlet(np.ones(n_states))
    emission = np.full((n_states, n_content), emit_noise / n_content)
    for state in range(n_states):
        emission[state, state * block : (state + 1) * block] += (1 - emit_noise) * rng.dirichlet(np.ones(block))
    shared = rng.dirichlet(np.full(n_states, alpha_trans), size=n_states)
    own = rng.dirichlet(np.full(n_states, alpha_trans), size=(n_tasks, n_states))
    transition = (1 - mix) * shared[None] + mix * own
    labelling = np.full((n_tasks, n_states, n_labels), label_noise / n_labels)
    for task in range(n_tasks):
        state_label = rng.permutation(n_states) % n_labels
        labelling[task, np.arange(n_states), state_label] += 1 - label_noise
    for name, rows in (("start", start), ("emission", emission), ("transition", transition), ("labels", labelling)):
        if not np.allclose(rows.sum(axis=-1), 1.0):
            raise FloatingPointError(f"label world: {name} rows do not sum to 1")
    return LabelWorld(start=start, emission=emission, transition=transition, labelling=labelling)


# ---- sampling -------------------------------------------------------------------------------------------------


def _draw(rng: np.random.Generator, probabilities: np.ndarray) -> np.ndarray:
    """One categorical draw per row of ``probabilities`` (N, C), by the inverse CDF."""
    cumulative = np.cumsum(probabilities, axis=-1)
    draws = (rng.random(probabilities.shape[0])[:, None] > cumulative).sum(axis=-1)
    return np.minimum(draws, probabilities.shape[-1] - 1)


def sample_examples(
    world: LabelWorld, tasks: np.ndarray, length: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One (x, y) per entry of ``tasks``: content symbols (N, length) and labels (N,) (label indices 0 … C − 1)."""
    tasks = np.asarray(tasks, dtype=np.int64)
    n = tasks.shape[0]
    state = _draw(rng, np.broadcast_to(world.start, (n, world.n_states)))
    content = np.empty((n, length), dtype=np.int64)
    for position in range(length):
        content[:, position] = _draw(rng, world.emission[state])
        if position + 1 < length:
            state = _draw(rng, world.transition[tasks, state])
    labels = _draw(rng, world.labelling[tasks, state])
    return content, labels


def sample_documents(
    world: LabelWorld, n_docs: int, ctx: int, min_len: int, max_len: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Pre-training rows: token ids (n_docs, ctx) and the task of each row.

    Each row is the delimiter, then segments [x (ℓ tokens), marker, y, delimiter] of one task, cut at ctx.
    """
    if not 1 <= min_len <= max_len:
        raise ValueError(f"segment lengths need 1 <= min_len <= max_len, got {min_len}, {max_len}")
    n_segments = ctx // (min_len + 3) + 1
    tasks = rng.integers(0, world.n_tasks, size=n_docs)
    flat_tasks = np.repeat(tasks, n_segments)
    lengths = rng.integers(min_len, max_len + 1, size=flat_tasks.shape[0])
    # sample max_len content tokens per segment and keep the state at each segment's own last position
    state = _draw(rng, np.broadcast_to(world.start, (flat_tasks.shape[0], world.n_states)))
    content = np.empty((flat_tasks.shape[0], max_len), dtype=np.int64)
    last_state = state.copy()
    for position in range(max_len):
        content[:, position] = _draw(rng, world.emission[state])
        last_state = np.where(lengths == position + 1, state, last_state)
        if position + 1 < max_len:
            state = _draw(rng, world.transition[flat_tasks, state])
    labels = _draw(rng, world.labelling[flat_tasks, last_state])
    width = max_len + 3
    segment = np.full((flat_tasks.shape[0], width), -1, dtype=np.int64)
    segment[:, :max_len] = world.content_ids(content)
    rows = np.arange(flat_tasks.shape[0])
    segment[rows, lengths] = MARKER
    segment[rows, lengths + 1] = FIRST_LABEL + labels
    segment[rows, lengths + 2] = DELIMITER
    valid = np.arange(width)[None, :] <= (lengths + 2)[:, None]
    segment = segment.reshape(n_docs, n_segments * width)
    valid = valid.reshape(n_docs, n_segments * width)
    docs = np.empty((n_docs, ctx), dtype=np.int64)
    for row in range(n_docs):
        docs[row, 0] = DELIMITER
        docs[row, 1:] = segment[row][valid[row]][: ctx - 1]
    return docs, tasks


# ---- exact quantities ---------------------------------------------------------------------------------------


def forward_joint(world: LabelWorld, content: np.ndarray) -> np.ndarray:
    """α[..., θ, s] = P(x, s_k = s | θ) for content symbols (..., k): shape (..., K, S)."""
    content = np.asarray(content)
    flat = content.reshape(-1, content.shape[-1])
    alpha = np.repeat((world.start[None, :] * world.emission[:, flat[:, 0]].T)[:, None, :], world.n_tasks, axis=1)
    for position in range(1, flat.shape[1]):
        alpha = np.einsum("nkr,krc->nkc", alpha, world.transition) * world.emission[:, flat[:, position]].T[:, None, :]
    return alpha.reshape(*content.shape[:-1], world.n_tasks, world.n_states)


def joint_likelihood(world: LabelWorld, alpha: np.ndarray) -> np.ndarray:
    """P(x, y | θ) for every label y from α (..., K, S): shape (..., K, C)."""
    return np.einsum("...ks,ksc->...kc", alpha, world.labelling)


def demo_log_likelihood(world: LabelWorld, content: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """log P(x_i, y_i | θ): content (..., n, k), labels (..., n) -> (..., n, K)."""
    joint = joint_likelihood(world, forward_joint(world, content))  # (..., n, K, C)
    picked = np.take_along_axis(joint, np.asarray(labels)[..., None, None], axis=-1)[..., 0]
    return np.log(picked)


def kernel_features(world: LabelWorld, content: np.ndarray) -> np.ndarray:
    """φ(x)[θ, s] = P(x, s_k = s | θ) / P(x | p_pretrain), flattened: (..., K·S)."""
    alpha = forward_joint(world, content)
    evidence = alpha.sum(axis=-1) @ world.task_prior
    return (alpha / evidence[..., None, None]).reshape(*alpha.shape[:-2], -1)


def second_moment(world: LabelWorld, length: int, n_samples: int, rng: np.random.Generator) -> np.ndarray:
    """Σ ≈ E_{x ∼ p_pretrain}[φ φᵀ] (uncentred, Monte Carlo over n_samples inputs of the given length)."""
    content, _ = sample_examples(world, rng.integers(0, world.n_tasks, size=n_samples), length, rng)
    phi = kernel_features(world, content)
    return phi.T @ phi / n_samples


# ---- the chain's task source ---------------------------------------------------------------------------------


def world_task_splits(cfg: TheoryICLOptions) -> dict[str, object]:
    """The ICL task of one world task θ* (``theory_icl.chain``) in the tasks schema, one DataFrame per split.

    Rows: ``text`` (x as " "-joined symbols), ``label`` (0 … C − 1), ``task`` and, beside every row, the exact
    P(y | x, θ*) (``oracle_y{c}``: the task-known posterior, the limit of P(y | prompt) as n grows) and
    P(y | x) under the pre-training prior (``prior_y{c}``: the exact posterior with no demonstrations). The
    exact posterior given a prompt's own demonstrations is computed from the prompt (:mod:`kicl.theory.icl_compare`).
    """
    import pandas as pd

    world = world_from_config(cfg.world)
    chain = cfg.chain
    task = chain.task_index
    if not 0 <= task < world.n_tasks:
        raise ValueError(f"theory_icl.chain.task_index {task} is not a task of the world (0 … {world.n_tasks - 1})")
    rng = np.random.default_rng([cfg.world.seed, 1, task])
    splits = {}
    for name, size in (("test", chain.n_eval), ("train", chain.n_demo_pool)):
        content, labels = sample_examples(world, np.full(size, task), cfg.world.x_len, rng)
        joint = joint_likelihood(world, forward_joint(world, content))  # (N, K, C)
        oracle = joint[:, task] / joint[:, task].sum(-1, keepdims=True)
        prior = joint.sum(1) / joint.sum((1, 2))[:, None]
        frame = pd.DataFrame({"text": [world.input_text(row) for row in content], "label": labels, "task": task})
        for c in range(world.n_labels):
            frame[f"oracle_y{c}"] = oracle[:, c]
            frame[f"prior_y{c}"] = prior[:, c]
        splits[name] = frame
    return splits


def write_world_task(cfg: TheoryICLOptions, out_dir) -> None:
    """Write the splits of :func:`world_task_splits` as ``{split}.jsonl`` (a ``source: local`` task folder)."""
    from pathlib import Path

    from kicl.fileio import write_text_atomic

    for name, frame in world_task_splits(cfg).items():
        write_text_atomic(Path(out_dir) / f"{name}.jsonl", frame.to_json(orient="records", lines=True))
