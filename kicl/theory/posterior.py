"""Exact Bayesian predictions on a block mixture-of-HMM: P(y | o_ICL) and the task-known oracle.

The ICL prompt is o_ICL = [x_1, y_1, delim, …, x_n, y_n, delim, x_test]. Two exact routes give the same
posterior predictive (note §1.4): a closed form over tasks in log space (used by the experiment) and the
explicit forward pass over the merged HMM with the reset operator R (the reference the tests compare with).
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp

from kicl.theory.hmm import BlockHMM, joint_likelihood, labelled_likelihood, start_forward


def demo_log_likelihood(hmm: BlockHMM, demo_inputs: np.ndarray, demo_labels: np.ndarray) -> np.ndarray:
    """log P(x_i, y_i | θ) for each demonstration: inputs (..., n, l), labels (..., n) -> (..., n, K)."""
    return np.log(labelled_likelihood(hmm, start_forward(hmm, demo_inputs), demo_labels))


def task_log_weights(hmm: BlockHMM, demo_log_lik: np.ndarray) -> np.ndarray:
    """log w_θ(n) = log π_θ + Σ_{i≤n} log P(x_i, y_i | θ) for every prefix length n = 1 … N.

    ``demo_log_lik`` (..., N, K) -> (..., N, K); row n − 1 holds the weights after n demonstrations.
    """
    return np.log(hmm.task_prior) + np.cumsum(demo_log_lik, axis=-2)


def posterior_from_weights(log_weights: np.ndarray, test_joint: np.ndarray) -> np.ndarray:
    """P(y | o_ICL) = Σ_θ w_θ P(x_test, y | θ) / Σ_{θ, y'} w_θ P(x_test, y' | θ), in log space.

    ``log_weights`` (..., K) unnormalised task log-weights, ``test_joint`` (..., K, V) = P(x_test, y | θ).
    The sum over tasks is a logsumexp, so products of many segment likelihoods cannot underflow.
    """
    log_joint = logsumexp(log_weights[..., :, None] + np.log(test_joint), axis=-2)  # (..., V)
    return np.exp(log_joint - logsumexp(log_joint, axis=-1, keepdims=True))


def posterior_closed_form(
    hmm: BlockHMM, demo_inputs: np.ndarray, demo_labels: np.ndarray, test_input: np.ndarray
) -> np.ndarray:
    """P(y | o_ICL) for one prompt or a batch: inputs (..., n, l), labels (..., n), test (..., l) -> (..., V)."""
    log_weights = np.log(hmm.task_prior) + demo_log_likelihood(hmm, demo_inputs, demo_labels).sum(axis=-2)
    test_joint = joint_likelihood(hmm, start_forward(hmm, test_input))
    return posterior_from_weights(log_weights, test_joint)


def posterior_forward_pass(
    hmm: BlockHMM, demo_inputs: np.ndarray, demo_labels: np.ndarray, test_input: np.ndarray
) -> np.ndarray:
    """P(y | o_ICL) for one prompt by the explicit forward pass over the merged K·m-state HMM.

    α starts at p_pretrain (mass π_θ on each s_θ). For each demonstration it takes the tokens of x_i one by
    one (α ← (α ∘ B[:, o]) T), then y_i and the delimiter (α ← (α ∘ B[:, y_i]) R; the delimiter's emission
    probability is the same for every state and cancels). α is rescaled after each segment. Finally x_test
    is applied and P(y | o_ICL) ∝ Σ_s α(s) B[s, y].
    """
    transition, emission, reset = hmm.merged_transition(), hmm.merged_emission(), hmm.reset_operator()
    alpha = np.zeros(hmm.n_states)
    alpha[hmm.start_states] = hmm.task_prior
    for tokens, label in zip(np.asarray(demo_inputs), np.asarray(demo_labels), strict=True):
        for token in tokens:
            alpha = (alpha * emission[:, token]) @ transition
        alpha = (alpha * emission[:, label]) @ reset
        alpha /= alpha.sum()
    for token in np.asarray(test_input):
        alpha = (alpha * emission[:, token]) @ transition
    predictive = alpha @ emission
    return predictive / predictive.sum()


def oracle_predictive(test_joint: np.ndarray, tasks: np.ndarray) -> np.ndarray:
    """Task-known oracle P(y | x_test, θ*) from ``test_joint`` (..., K, V) and the true tasks (...)."""
    picked = np.take_along_axis(test_joint, np.asarray(tasks)[..., None, None], axis=-2)[..., 0, :]
    return picked / picked.sum(axis=-1, keepdims=True)
