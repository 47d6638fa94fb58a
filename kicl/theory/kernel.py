"""Kernel regression over ICL demonstrations (Theorem 1, Eq. 6 of Han et al.) and its baselines.

Features φ(x) are rows of the observable operator T_x of the merged HMM (note §3.1), optionally divided by
P(x | p_pretrain); Σ = E_{x∼p_pretrain}[φ φᵀ] is the uncentred second moment; K(x, x') = φ(x)ᵀ A φ(x')
with A = (Σ + λI)⁻¹. The Eq. 6 estimate after n demonstrations is ŷ_n = (1/n) Σ_i e(y_i) K(x_i, x_test).
With ``normalise="pre"`` and an exact Σ, E[ŷ_n] ∝ P(y | x_test, θ*) exactly (note §3.3).
"""

from __future__ import annotations

import numpy as np

from kicl.theory.hmm import BlockHMM, block_forward, sample_segments, sample_tasks, start_forward

FEATURE_KINDS = ("start", "full")
NORMALISATIONS = ("pre", "none")


def features(hmm: BlockHMM, inputs: np.ndarray, kind: str = "start", normalise: str = "pre") -> np.ndarray:
    """φ(x) for int inputs (..., l): shape (..., D).

    ``kind="start"``: the start-state row of each block of T_x (D = K·m), i.e. the merged HMM's predictive
    belief after x. ``kind="full"``: every structurally non-zero entry of vec(T_x), all rows of the diagonal
    blocks (D = K·m·m); the off-block entries are always zero and are dropped, which leaves K unchanged.
    ``normalise="pre"`` divides by P(x | p_pretrain) = Σ_θ π_θ P(x | θ); ``"none"`` keeps vec(T_x) literal.
    """
    if kind not in FEATURE_KINDS:
        raise ValueError(f"features kind must be one of {FEATURE_KINDS}, got {kind!r}")
    if normalise not in NORMALISATIONS:
        raise ValueError(f"features normalise must be one of {NORMALISATIONS}, got {normalise!r}")
    inputs = np.asarray(inputs)
    if kind == "start":
        operator = start_forward(hmm, inputs)  # (..., K, m)
        start_rows = operator
    else:
        operator = block_forward(hmm, inputs)  # (..., K, m, m)
        start_rows = operator[..., 0, :]
    flat = operator.reshape(*inputs.shape[:-1], -1)
    if normalise == "pre":
        evidence = start_rows.sum(axis=-1) @ hmm.task_prior  # P(x | p_pretrain), (...)
        flat = flat / evidence[..., None]
    return flat


def second_moment_monte_carlo(
    hmm: BlockHMM, x_len: int, n_samples: int, rng: np.random.Generator, kind: str = "start", normalise: str = "pre"
) -> np.ndarray:
    """Σ ≈ (1/N) Σ_j φ(x_j) φ(x_j)ᵀ over N prefixes x_j ∼ p_pretrain (θ ∼ π, first l tokens of a segment).

    Uncentred on purpose: centring makes Σ singular along the direction Σ_θ π_θ Σ_s φ = 1 and collapses
    the kernel regression to label frequency (pitfall P3).
    """
    prefixes = sample_segments(hmm, sample_tasks(hmm, n_samples, rng), x_len, rng)
    phi = features(hmm, prefixes, kind, normalise)
    return phi.T @ phi / n_samples


def second_moment_exact(
    hmm: BlockHMM, x_len: int, kind: str = "start", normalise: str = "pre", chunk_size: int = 20_000
) -> np.ndarray:
    """Σ = Σ_x P(x | p_pretrain) φ(x) φ(x)ᵀ by enumerating all V^l prefixes (feasible for V^l ≲ 10⁶)."""
    n_prefixes = hmm.n_tokens**x_len
    dim = hmm.n_states if kind == "start" else hmm.n_states * hmm.states_per_task
    sigma = np.zeros((dim, dim))
    total = 0.0
    for begin in range(0, n_prefixes, chunk_size):
        index = np.arange(begin, min(begin + chunk_size, n_prefixes))
        prefixes = np.stack(np.unravel_index(index, (hmm.n_tokens,) * x_len), axis=-1)
        evidence = start_forward(hmm, prefixes).sum(axis=-1) @ hmm.task_prior
        phi = features(hmm, prefixes, kind, normalise)
        sigma += (phi * evidence[:, None]).T @ phi
        total += evidence.sum()
    if not np.isclose(total, 1.0):
        raise FloatingPointError(f"prefix probabilities sum to {total}, not 1")
    return sigma


def regularised_inverse(sigma: np.ndarray, ridge: float) -> np.ndarray:
    """A = (Σ + λI)⁻¹ with λ = ridge · tr(Σ)/D; ``ridge = 0`` gives the Moore–Penrose pseudo-inverse.

    Σ is singular (structural zeros: off-block entries, the start-state column under no-return), so a
    plain inverse is never used (pitfall P5).
    """
    eigenvalues, eigenvectors = np.linalg.eigh((sigma + sigma.T) / 2)
    if ridge > 0:
        inverse_eigenvalues = 1.0 / (eigenvalues + ridge * np.trace(sigma) / sigma.shape[0])
    else:
        cutoff = sigma.shape[0] * np.finfo(float).eps * max(eigenvalues.max(), 0.0)
        safe = np.where(eigenvalues > cutoff, eigenvalues, 1.0)
        inverse_eigenvalues = np.where(eigenvalues > cutoff, 1.0 / safe, 0.0)
    return (eigenvectors * inverse_eigenvalues) @ eigenvectors.T


def kernel_to_test(demo_features: np.ndarray, test_features: np.ndarray, metric: np.ndarray | None) -> np.ndarray:
    """K(x_i, x_test) = φ(x_i)ᵀ A φ(x_test); ``metric=None`` means A = I (plain linear kernel).

    ``demo_features`` (..., n, D), ``test_features`` (..., D) -> (..., n). The kernel with A = Σ⁻¹ is signed.
    """
    projected = test_features if metric is None else test_features @ metric
    return np.einsum("...nd,...d->...n", demo_features, projected)


def prefix_label_sums(weights: np.ndarray, labels: np.ndarray, n_tokens: int, ns: list[int]) -> np.ndarray:
    """S_n = Σ_{i≤n} w_i e(y_i) for each n in ``ns``: weights, labels (P, N) -> (P, len(ns), V)."""
    one_hot = np.zeros((*labels.shape, n_tokens))
    np.put_along_axis(one_hot, labels[..., None], weights[..., None], axis=-1)
    cumulative = np.cumsum(one_hot, axis=-2)
    return cumulative[..., np.asarray(ns) - 1, :]


def clip_normalise(scores: np.ndarray) -> np.ndarray:
    """ŷ⁺ = max(ŷ, 0) / Σ_y max(ŷ, 0) along the last axis; uniform where every entry is ≤ 0."""
    clipped = np.maximum(scores, 0.0)
    total = clipped.sum(axis=-1, keepdims=True)
    uniform = np.full_like(clipped, 1.0 / clipped.shape[-1])
    return np.where(total > 0, clipped / np.where(total > 0, total, 1.0), uniform)


def sum_normalise(scores: np.ndarray) -> np.ndarray:
    """ŷ / Σ_y ŷ along the last axis (Nadaraya–Watson); uniform where the sum is exactly 0.

    With a signed kernel the sum can be ≈ 0 or negative, so entries can be huge or negative (pitfall P2).
    """
    total = scores.sum(axis=-1, keepdims=True)
    uniform = np.full_like(scores, 1.0 / scores.shape[-1])
    return np.where(total != 0, scores / np.where(total != 0, total, 1.0), uniform)
