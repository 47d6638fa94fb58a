"""Random mixture-of-HMM pre-training distributions in the block layout, and vectorised sampling.

Task θ owns the block of hidden states {θ·m, …, θ·m + m − 1} of the merged HMM, and its start state
s_θ = θ·m is local state 0 of that block. Transitions are block-diagonal, so the hidden state carries the
task identity, and the delimiter (Assumption 1 of the paper) is the reset operator R that sends every state
back to the start state of its own block. Parameters are stored per block: ``transition`` (K, m, m),
``emission`` (K, m, V). See ``/work/shared/notes/theory-table3.md`` §1 for the construction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BlockHMM:
    """A mixture of ``n_tasks`` HMMs, one block of hidden states per task, with a uniform task prior."""

    transition: np.ndarray  # (K, m, m): transition[θ, r, c] = P(s' = c | s = r) inside block θ
    emission: np.ndarray  # (K, m, V): emission[θ, s, o] = P(o | s) inside block θ

    @property
    def n_tasks(self) -> int:
        return self.transition.shape[0]

    @property
    def states_per_task(self) -> int:
        return self.transition.shape[1]

    @property
    def n_states(self) -> int:
        return self.n_tasks * self.states_per_task

    @property
    def n_tokens(self) -> int:
        return self.emission.shape[2]

    @property
    def task_prior(self) -> np.ndarray:
        """π_θ = 1/K: the pre-training distribution over tasks (mass on the start states)."""
        return np.full(self.n_tasks, 1.0 / self.n_tasks)

    @property
    def start_states(self) -> np.ndarray:
        """Merged-HMM index of each task's start state s_θ."""
        return np.arange(self.n_tasks) * self.states_per_task

    def merged_transition(self) -> np.ndarray:
        """The (K·m, K·m) block-diagonal transition matrix of the merged HMM."""
        merged = np.zeros((self.n_states, self.n_states))
        m = self.states_per_task
        for task in range(self.n_tasks):
            merged[task * m : (task + 1) * m, task * m : (task + 1) * m] = self.transition[task]
        return merged

    def merged_emission(self) -> np.ndarray:
        """The (K·m, V) emission matrix of the merged HMM."""
        return self.emission.reshape(self.n_states, self.n_tokens)

    def reset_operator(self) -> np.ndarray:
        """R[s, s'] = 1[s' = s_θ(s)]: the delimiter sends each state to the start state of its block."""
        reset = np.zeros((self.n_states, self.n_states))
        reset[np.arange(self.n_states), np.repeat(self.start_states, self.states_per_task)] = 1.0
        return reset


def _floored_dirichlet(rng: np.random.Generator, alpha: float, size: int, n_rows: int, floor: float) -> np.ndarray:
    """``n_rows`` draws of Dirichlet(alpha · 1_size), each entry raised by ``floor`` and renormalised."""
    rows = rng.dirichlet(np.full(size, alpha), size=n_rows) + floor
    rows /= rows.sum(axis=1, keepdims=True)
    if not (np.all(np.isfinite(rows)) and np.allclose(rows.sum(axis=1), 1.0)):
        raise FloatingPointError(f"Dirichlet({alpha}) over {size} entries gave rows that are not distributions")
    return rows


# shape: one keyword per generator key of the theory.hmm config section (x_len aside), each with the note's default
def make_block_hmm(
    rng: np.random.Generator,
    n_tasks: int = 8,
    states_per_task: int = 10,
    n_tokens: int = 100,
    alpha_start: float = 1.0,
    alpha_trans: float = 0.001,
    alpha_emit: float = 0.0003,
    floor: float = 1e-4,
    no_return: bool = True,
) -> BlockHMM:
    """Draw a random block mixture-of-HMM (note §1.1).

    Inside each block, the start row is Dirichlet(alpha_start) and the other rows Dirichlet(alpha_trans),
    drawn over the allowed successors only: with ``no_return`` the start state (column 0) is excluded, so
    it is entered only through the delimiter. Drawing over the m − 1 allowed columns (never drawing over m
    and masking, pitfall P1) keeps each sparse row's dominant entry. Emission rows are Dirichlet(alpha_emit)
    over the ``n_tokens`` tokens. ``floor`` is added to every allowed entry before renormalising, so no
    likelihood is exactly zero (pitfall P4).
    """
    m = states_per_task
    if m < 2 and no_return:
        raise ValueError("states_per_task must be >= 2 when no_return is set (the start state cannot recur)")
    first_allowed = 1 if no_return else 0
    n_allowed = m - first_allowed
    start_rows = _floored_dirichlet(rng, alpha_start, n_allowed, n_tasks, floor)
    other_rows = _floored_dirichlet(rng, alpha_trans, n_allowed, n_tasks * (m - 1), floor)
    transition = np.zeros((n_tasks, m, m))
    transition[:, 0, first_allowed:] = start_rows
    transition[:, 1:, first_allowed:] = other_rows.reshape(n_tasks, m - 1, n_allowed)
    emission = _floored_dirichlet(rng, alpha_emit, n_tokens, n_tasks * m, floor)
    return BlockHMM(transition=transition, emission=emission.reshape(n_tasks, m, n_tokens))


def _inverse_cdf(rng: np.random.Generator, cumulative_rows: np.ndarray) -> np.ndarray:
    """One categorical draw per row of ``cumulative_rows`` (N, C): the number of cumsum entries below u."""
    u = rng.random(cumulative_rows.shape[0])
    draws = (u[:, None] > cumulative_rows).sum(axis=1)
    return np.minimum(draws, cumulative_rows.shape[1] - 1)  # guards against cumsum round-off below 1


def sample_segments(hmm: BlockHMM, tasks: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    """Sample one segment of ``length`` tokens per entry of ``tasks``, each starting at its start state.

    Vectorised over segments; loops over the ``length`` positions only. Returns int tokens (N, length).
    """
    tasks = np.asarray(tasks, dtype=np.int64)
    emission_cdf = np.cumsum(hmm.emission, axis=2)
    transition_cdf = np.cumsum(hmm.transition, axis=2)
    state = np.zeros(tasks.shape[0], dtype=np.int64)  # local state 0 = start state
    tokens = np.empty((tasks.shape[0], length), dtype=np.int64)
    for position in range(length):
        tokens[:, position] = _inverse_cdf(rng, emission_cdf[tasks, state])
        if position + 1 < length:
            state = _inverse_cdf(rng, transition_cdf[tasks, state])
    return tokens


def sample_tasks(hmm: BlockHMM, n: int, rng: np.random.Generator) -> np.ndarray:
    """Draw ``n`` tasks from the uniform pre-training prior π."""
    return rng.integers(0, hmm.n_tasks, size=n)


def start_forward(hmm: BlockHMM, inputs: np.ndarray) -> np.ndarray:
    """α[..., θ, s'] = P(x, s_l = s' | θ) = (e_{s_θ}ᵀ T_x)[s'] for every task, by the forward recursion.

    ``inputs`` is an int array (..., l) of tokens; the result has shape (..., K, m) and is the start-state
    row of each block of the observable operator T_x = T_{x_0} ⋯ T_{x_{l-1}}, T_o = diag(B[:, o]) T.
    """
    inputs = np.asarray(inputs)
    flat = inputs.reshape(-1, inputs.shape[-1])
    alpha = np.zeros((flat.shape[0], hmm.n_tasks, hmm.states_per_task))
    alpha[:, :, 0] = 1.0
    for position in range(flat.shape[1]):
        emitted = np.moveaxis(hmm.emission[:, :, flat[:, position]], 2, 0)  # (N, K, m)
        alpha = np.einsum("nkr,krc->nkc", alpha * emitted, hmm.transition)
    return alpha.reshape(*inputs.shape[:-1], hmm.n_tasks, hmm.states_per_task)


def block_forward(hmm: BlockHMM, inputs: np.ndarray) -> np.ndarray:
    """Every row of every diagonal block of T_x: (..., K, m, m) with [.., θ, r, c] = P(x, s_l = c | s_0 = r, θ)."""
    inputs = np.asarray(inputs)
    flat = inputs.reshape(-1, inputs.shape[-1])
    m = hmm.states_per_task
    operator = np.broadcast_to(np.eye(m), (flat.shape[0], hmm.n_tasks, m, m)).copy()
    for position in range(flat.shape[1]):
        emitted = np.moveaxis(hmm.emission[:, :, flat[:, position]], 2, 0)  # (N, K, m)
        operator = np.einsum("nkar,krc->nkac", operator * emitted[:, :, None, :], hmm.transition)
    return operator.reshape(*inputs.shape[:-1], hmm.n_tasks, m, m)


def joint_likelihood(hmm: BlockHMM, alpha: np.ndarray) -> np.ndarray:
    """P(x, y | θ) for every y, from start-row beliefs α (..., K, m): shape (..., K, V)."""
    return np.einsum("...ks,ksv->...kv", alpha, hmm.emission)


def labelled_likelihood(hmm: BlockHMM, alpha: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """P(x, y | θ) at the given labels y only: α (..., K, m), labels (...) -> (..., K)."""
    labels = np.asarray(labels)
    emitted = np.moveaxis(hmm.emission[:, :, labels.reshape(-1)], 2, 0)  # (N, K, m)
    flat_alpha = alpha.reshape(-1, hmm.n_tasks, hmm.states_per_task)
    return np.einsum("nks,nks->nk", flat_alpha, emitted).reshape(*labels.shape, hmm.n_tasks)
