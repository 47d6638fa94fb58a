"""The block mixture-of-HMM generator, sampler, forward recursions and exact posteriors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from kicl.theory.hmm import (
    BlockHMM,
    block_forward,
    joint_likelihood,
    labelled_likelihood,
    make_block_hmm,
    sample_segments,
    sample_tasks,
    start_forward,
)
from kicl.theory.posterior import (
    oracle_predictive,
    posterior_closed_form,
    posterior_forward_pass,
    posterior_from_weights,
    task_log_weights,
)


def tiny_hmm(seed: int = 0, **options) -> BlockHMM:
    """2 tasks x 3 states x 5 tokens, moderately peaked, so every prefix has visible probability."""
    settings = dict(n_tasks=2, states_per_task=3, n_tokens=5, alpha_start=1.0, alpha_trans=0.5, alpha_emit=0.3)
    return make_block_hmm(np.random.default_rng(seed), **(settings | options))


def merged_operator(hmm: BlockHMM, tokens) -> np.ndarray:
    """T_x = Π_t diag(B[:, o_t]) T on the merged (K·m)-state HMM, by explicit matrix products."""
    transition, emission = hmm.merged_transition(), hmm.merged_emission()
    operator = np.eye(hmm.n_states)
    for token in tokens:
        operator = operator @ np.diag(emission[:, token]) @ transition
    return operator


# ---------------------------------------------------------------- generator
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_default_generator_rows_are_distributions_with_the_block_structure(seed):
    hmm = make_block_hmm(np.random.default_rng(seed))
    assert hmm.transition.shape == (8, 10, 10) and hmm.emission.shape == (8, 10, 100)
    np.testing.assert_allclose(hmm.transition.sum(axis=2), 1.0, atol=1e-12)
    np.testing.assert_allclose(hmm.emission.sum(axis=2), 1.0, atol=1e-12)
    # no return: column 0 (the start state) is never a successor; every other entry carries the floor
    assert np.all(hmm.transition[:, :, 0] == 0)
    assert np.all(hmm.transition[:, :, 1:] > 0) and np.all(hmm.emission > 0)
    # merged transition is block-diagonal, so the delimiter's reset commutes as T R = R
    merged, reset = hmm.merged_transition(), hmm.reset_operator()
    np.testing.assert_allclose(merged @ reset, reset, atol=1e-12)
    mask = np.kron(np.eye(8), np.ones((10, 10)))
    assert np.all(merged[mask == 0] == 0)


def test_sparse_rows_keep_their_dominant_successor():
    """Pitfall P1: drawing over 10 states and masking column 0 would leave ~10% of rows near-uniform."""
    for seed in range(5):
        hmm = make_block_hmm(np.random.default_rng(seed))
        non_start_rows = hmm.transition[:, 1:, 1:]  # (8, 9, 9), allowed successors only
        assert non_start_rows.max(axis=2).min() > 0.5
        # the start row fans out (Dirichlet(1)): no single successor dominates every block
        assert hmm.transition[:, 0, 1:].max(axis=1).min() < 0.9
        # emission rows are near one-hot ("signature" tokens)
        assert np.median(hmm.emission.max(axis=2)) > 0.9


def test_no_return_off_lets_the_start_state_recur():
    hmm = make_block_hmm(np.random.default_rng(0), no_return=False)
    assert np.all(hmm.transition[:, :, 0] > 0)
    np.testing.assert_allclose(hmm.transition.sum(axis=2), 1.0, atol=1e-12)


def test_generator_and_sampler_are_deterministic_by_seed():
    first, second = make_block_hmm(np.random.default_rng(7)), make_block_hmm(np.random.default_rng(7))
    np.testing.assert_array_equal(first.transition, second.transition)
    np.testing.assert_array_equal(first.emission, second.emission)
    other = make_block_hmm(np.random.default_rng(8))
    assert not np.array_equal(first.emission, other.emission)
    tasks = np.arange(50) % 8
    draws = [sample_segments(first, tasks, 4, np.random.default_rng(3)) for _ in range(2)]
    np.testing.assert_array_equal(*draws)


# ---------------------------------------------------------------- sampling and forward recursions
def test_segment_frequencies_match_the_exact_segment_probabilities():
    hmm, length, n_samples = tiny_hmm(), 2, 200_000
    rng = np.random.default_rng(11)
    tasks = sample_tasks(hmm, n_samples, rng)
    segments = sample_segments(hmm, tasks, length, rng)
    for task in range(hmm.n_tasks):
        chosen = segments[tasks == task]
        counts = np.zeros((hmm.n_tokens,) * length)
        np.add.at(counts, tuple(chosen.T), 1)
        frequency = counts / len(chosen)
        all_prefixes = np.array(list(itertools.product(range(hmm.n_tokens), repeat=length)))
        exact = start_forward(hmm, all_prefixes)[:, task].sum(axis=-1).reshape(frequency.shape)
        standard_error = np.sqrt(exact * (1 - exact) / len(chosen))
        assert np.all(np.abs(frequency - exact) <= 5 * standard_error + 1e-4)


def test_start_forward_equals_the_merged_observable_operator():
    hmm = tiny_hmm(3)
    prefixes = np.array(list(itertools.product(range(hmm.n_tokens), repeat=3)))
    alpha = start_forward(hmm, prefixes)  # (N, K, m)
    full = block_forward(hmm, prefixes)  # (N, K, m, m)
    np.testing.assert_allclose(full[:, :, 0, :], alpha, rtol=1e-12)
    for index in [0, 17, 63, 124]:
        operator = merged_operator(hmm, prefixes[index])
        for task, start in enumerate(hmm.start_states):
            block = slice(start, start + hmm.states_per_task)
            np.testing.assert_allclose(operator[start, block], alpha[index, task], rtol=1e-12)
            np.testing.assert_allclose(operator[block, block], full[index, task], rtol=1e-12)
    # P(x | θ) sums to 1 over all prefixes of each task
    np.testing.assert_allclose(alpha.sum(axis=(0, 2)), 1.0, rtol=1e-12)


def test_labelled_likelihood_picks_the_joint_at_the_label():
    hmm = tiny_hmm(4)
    rng = np.random.default_rng(0)
    inputs, labels = rng.integers(0, 5, size=(6, 2)), rng.integers(0, 5, size=6)
    alpha = start_forward(hmm, inputs)
    joint = joint_likelihood(hmm, alpha)  # (6, K, V)
    np.testing.assert_allclose(labelled_likelihood(hmm, alpha, labels), joint[np.arange(6), :, labels])
    # P(x, y | θ) = e_sθᵀ T_x B[:, y] on the merged HMM
    operator = merged_operator(hmm, inputs[0])
    np.testing.assert_allclose(joint[0], operator[hmm.start_states] @ hmm.merged_emission(), rtol=1e-12)


# ---------------------------------------------------------------- exact posterior
def draw_prompt(hmm: BlockHMM, n: int, x_len: int, seed: int):
    rng = np.random.default_rng(seed)
    task = sample_tasks(hmm, 1, rng)
    segments = sample_segments(hmm, np.repeat(task, n + 1), x_len + 1, rng)
    return segments[:n, :x_len], segments[:n, x_len], segments[n, :x_len], int(task[0])


@pytest.mark.parametrize("n", [1, 2, 4, 32, 128])
@pytest.mark.parametrize("no_return", [True, False])
def test_closed_form_posterior_equals_the_explicit_forward_pass(n, no_return):
    hmm = make_block_hmm(np.random.default_rng(n), no_return=no_return)
    demo_x, demo_y, test_x, _ = draw_prompt(hmm, n, 3, seed=100 + n)
    closed = posterior_closed_form(hmm, demo_x, demo_y, test_x)
    forward = posterior_forward_pass(hmm, demo_x, demo_y, test_x)
    assert closed.shape == (100,)
    np.testing.assert_allclose(closed.sum(), 1.0, atol=1e-12)
    assert np.abs(closed - forward).max() <= 1e-12


def test_closed_form_posterior_with_tied_emissions_and_confusable_tasks():
    """Blocks sharing one emission matrix: the tasks are hard to tell apart, the posterior still exact."""
    base = make_block_hmm(np.random.default_rng(5), alpha_trans=0.03)
    hmm = BlockHMM(transition=base.transition, emission=np.broadcast_to(base.emission[:1], base.emission.shape))
    for n in [1, 8, 64]:
        demo_x, demo_y, test_x, _ = draw_prompt(hmm, n, 2, seed=n)
        closed = posterior_closed_form(hmm, demo_x, demo_y, test_x)
        assert np.abs(closed - posterior_forward_pass(hmm, demo_x, demo_y, test_x)).max() <= 1e-12


def test_batched_prefix_posteriors_match_single_prompts():
    hmm = make_block_hmm(np.random.default_rng(9))
    demo_x, demo_y, test_x, _ = draw_prompt(hmm, 16, 3, seed=1)
    log_lik = np.log(labelled_likelihood(hmm, start_forward(hmm, demo_x), demo_y))
    weights = task_log_weights(hmm, log_lik)  # (16, K)
    test_joint = joint_likelihood(hmm, start_forward(hmm, test_x))
    for n in [1, 5, 16]:
        np.testing.assert_allclose(
            posterior_from_weights(weights[n - 1], test_joint),
            posterior_closed_form(hmm, demo_x[:n], demo_y[:n], test_x),
            atol=1e-13,
        )


def test_posterior_does_not_underflow_with_many_demonstrations():
    hmm = make_block_hmm(np.random.default_rng(2))
    demo_x, demo_y, test_x, _ = draw_prompt(hmm, 2000, 3, seed=2)
    posterior = posterior_closed_form(hmm, demo_x, demo_y, test_x)
    assert np.all(np.isfinite(posterior)) and np.isclose(posterior.sum(), 1.0)


def test_oracle_is_the_posterior_when_the_task_is_certain():
    hmm = tiny_hmm(6)
    test_joint = joint_likelihood(hmm, start_forward(hmm, np.array([[1, 2], [3, 0]])))  # (2, K, V)
    tasks = np.array([1, 0])
    certain = np.where(np.arange(hmm.n_tasks)[None] == tasks[:, None], 0.0, -np.inf)
    np.testing.assert_allclose(posterior_from_weights(certain, test_joint), oracle_predictive(test_joint, tasks))
    np.testing.assert_allclose(oracle_predictive(test_joint, tasks).sum(axis=-1), 1.0)


def test_posterior_concentrates_on_the_true_task_as_n_grows():
    """Assumption 2: with confusable tasks the posterior approaches the task-known oracle."""
    base = make_block_hmm(np.random.default_rng(5), alpha_trans=0.03)
    hmm = BlockHMM(transition=base.transition, emission=np.broadcast_to(base.emission[:1], base.emission.shape))
    gaps = {1: [], 64: []}
    for seed in range(30):
        demo_x, demo_y, test_x, task = draw_prompt(hmm, 64, 2, seed=seed)
        oracle = oracle_predictive(joint_likelihood(hmm, start_forward(hmm, test_x)), np.array(task))
        for n in gaps:
            gaps[n].append(np.abs(posterior_closed_form(hmm, demo_x[:n], demo_y[:n], test_x) - oracle).sum())
    assert np.mean(gaps[64]) < 0.01 < np.mean(gaps[1])
