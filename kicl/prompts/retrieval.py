"""Similarity-based demonstration retrieval (our extension of the paper's §4.2 sample-selection discussion).

The retrieval strategies ``nearest`` and ``farthest`` (registered in :mod:`kicl.prompts.build`) choose each test
point's demonstrations by the cosine similarity of sentence-encoder embeddings. The embeddings of the test
inputs and of the demonstration pool are computed once per prompt set (one encoder load, one call of the
embedding function); the pool can be capped to a seeded subsample first (``protocol.retrieval_pool_size``).

Prompt order: demonstrations are placed by ascending similarity to the test input, so the most similar
chosen demonstration comes last, right before the test input (``nearest``: the k most similar with the
most similar last; ``farthest``: the k least similar with the least similar first). Ties are broken by the
pool row order (stable sort).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

#: demonstration strategies that need sentence embeddings (and thus protocol.retrieval_encoder)
RETRIEVAL_STRATEGIES = ("nearest", "farthest")

#: texts -> (n, dim) embeddings (need not be normalised)
EmbedFunction = Callable[[Sequence[str]], np.ndarray]


def is_retrieval(strategy: str) -> bool:
    """Whether a demonstration strategy needs embeddings."""
    return strategy in RETRIEVAL_STRATEGIES


def cap_pool(pool: pd.DataFrame, size: int | None, seed: int) -> pd.DataFrame:
    """The pool itself (size None or >= len(pool)), else a seeded subsample of ``size`` rows in pool order.

    The draw uses its own seed stream (``SeedSequence(seed, spawn_key=(1,))``), independent of the test-point
    selection and of the per-prompt generators.
    """
    if size is None or size >= len(pool):
        return pool
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,)))
    return pool.iloc[np.sort(rng.choice(len(pool), size=int(size), replace=False))]


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), float32."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def embed_once(
    embed: EmbedFunction, test_texts: Sequence[str], pool_texts: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """(test embeddings, pool embeddings), unit-normalised, from ONE call of ``embed`` on all texts."""
    texts = list(test_texts) + list(pool_texts)
    vectors = np.asarray(embed(texts))
    if vectors.ndim != 2 or len(vectors) != len(texts):
        raise ValueError(f"the embedding function returned shape {vectors.shape} for {len(texts)} texts")
    vectors = unit_rows(vectors)
    return vectors[: len(test_texts)], vectors[len(test_texts) :]


def ranked_by_similarity(similarities: np.ndarray, k: int, most_similar: bool) -> np.ndarray:
    """Positions of the k most (or least) similar pool rows, in ascending-similarity (prompt) order."""
    similarities = np.asarray(similarities)
    if k > len(similarities):
        raise ValueError(f"{k} demonstrations requested but the demonstration pool has {len(similarities)} examples")
    order = np.argsort(-similarities if most_similar else similarities, kind="stable")[:k]
    return order[::-1] if most_similar else order
