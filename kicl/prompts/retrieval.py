"""Similarity-based demonstration selection and ordering (our extension of the paper's §4.2 sample selection).

A *similarity provider* is a callable ``(test_texts, pool_texts) -> (n_test, n_pool) matrix``; the prompt builder
calls each provider it needs ONCE per prompt set. Three kinds exist (:data:`SIMILARITY_KINDS`):

* ``encoder``: cosine of sentence-encoder embeddings (``protocol.retrieval_encoder``), built from an embedding
  function by :func:`encoder_similarity`; ranks ``nearest``/``farthest``, draws ``similarity_band`` and sorts the
  demonstrations under ``protocol.demo_order: ascending | descending``;
* ``bm25``: Okapi BM25 of the test input (query) against each pool text (:func:`kicl.prompts.bm25.bm25_similarity`,
  computed in-process, no resource);
* ``model_kernel``: the paper's Eq. 9 prediction similarity P(o|x_test)ᵀP(o|x_i) of the language model itself,
  provided by the capture code (``kicl.capture``) and injected by the caller.

Which kinds a protocol needs is decided by :func:`needed_similarities` only (the workflow uses :func:`needs_encoder`,
:func:`needs_model_kernel` and :func:`needs_bm25` to add inputs). A strategy that ranks the pool first caps it to a
seeded subsample (``protocol.retrieval_pool_size``): each pool text costs an embedding or a forward pass.

Prompt order of the ranking strategies: ascending similarity, so the most similar chosen demonstration comes last,
right before the test input (``nearest``/``bm25``/``model_kernel``: the k most similar, the most similar last;
``farthest``: the k least similar, the least similar first). Ties are broken by the pool row order (stable sort).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from kicl.prompts.options import Protocol

#: texts -> (n, dim) embeddings (need not be normalised)
EmbedFunction = Callable[[Sequence[str]], np.ndarray]
#: (test texts, pool texts) -> (n_test, n_pool) similarity matrix (larger = more similar)
SimilarityProvider = Callable[[Sequence[str], Sequence[str]], np.ndarray]

#: the similarity kinds a provider can give
SIMILARITY_KINDS = ("encoder", "bm25", "model_kernel")
#: demonstration strategy -> the similarity it selects by (strategies not listed select without one)
STRATEGY_SIMILARITY = {
    "nearest": "encoder",
    "farthest": "encoder",
    "similarity_band": "encoder",
    "bm25": "bm25",
    "model_kernel": "model_kernel",
}
#: strategies whose native order is ascending similarity (the others keep the order they drew)
RANKING_STRATEGIES = ("nearest", "farthest", "bm25", "model_kernel")
#: demonstration orders that sort the chosen set by encoder similarity to the test input
SORTED_ORDERS = ("ascending", "descending")
#: strategies whose (capped) pool also loses the near-copies of the test input by encoder cosine >=
#: ``protocol.dedup_similarity``; every strategy loses those with the same normalised text
#: (:func:`kicl.prompts.build.normalised_text`). random and class_balanced draw from the whole, uncapped pool, whose
#: embedding would cost a pass over every pool text: normalised text only
NEAR_COPY_ENCODER_STRATEGIES = ("nearest", "farthest", "similarity_band", "bm25", "model_kernel")


def selection_similarity(strategy: str) -> str | None:
    """The similarity kind a demonstration strategy selects by, or None (random, class_balanced)."""
    return STRATEGY_SIMILARITY.get(strategy)


def needed_similarities(protocol: Protocol) -> frozenset[str]:
    """THE decision of which similarity kinds a (condition's effective) protocol needs.

    The strategy's own kind (:data:`STRATEGY_SIMILARITY`), plus ``encoder`` when ``protocol.demo_order`` sorts the
    demonstrations by similarity.
    """
    kinds = set()
    strategy_kind = selection_similarity(protocol.demo_strategy)
    if strategy_kind:
        kinds.add(strategy_kind)
    if protocol.demo_order in SORTED_ORDERS:
        kinds.add("encoder")
    return frozenset(kinds)


def needs_encoder(protocol: Protocol) -> bool:
    """Whether building the prompts needs the sentence encoder ``protocol.retrieval_encoder`` (its manifest): to
    rank or sort by encoder cosine, or to remove near-copies of the test input from a ranking strategy's capped
    pool (:data:`NEAR_COPY_ENCODER_STRATEGIES`)."""
    return "encoder" in needed_similarities(protocol) or protocol.demo_strategy in NEAR_COPY_ENCODER_STRATEGIES


def needs_model_kernel(protocol: Protocol) -> bool:
    """Whether building the prompts needs the model's P(o|x) (the ``model_kernel`` similarity provider)."""
    return "model_kernel" in needed_similarities(protocol)


def needs_bm25(protocol: Protocol) -> bool:
    """Whether building the prompts computes BM25 scores (the bm25s library)."""
    return "bm25" in needed_similarities(protocol)


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


def encoder_similarity(embed: EmbedFunction) -> SimilarityProvider:
    """The ``encoder`` provider: cosine of the embeddings of ``embed`` (one call on test and pool texts)."""

    def cosine(test_texts: Sequence[str], pool_texts: Sequence[str]) -> np.ndarray:
        test_vectors, pool_vectors = embed_once(embed, test_texts, pool_texts)
        return test_vectors @ pool_vectors.T

    return cosine


def similarity_matrix(
    provider: SimilarityProvider, kind: str, test_texts: Sequence[str], pool_texts: Sequence[str]
) -> np.ndarray:
    """The provider's (n_test, n_pool) matrix as float64, checked for shape and finite values."""
    matrix = np.asarray(provider(list(test_texts), list(pool_texts)), dtype=np.float64)
    if matrix.shape != (len(test_texts), len(pool_texts)):
        raise ValueError(
            f"the {kind} similarity provider returned shape {matrix.shape} for {len(test_texts)} test "
            f"and {len(pool_texts)} pool texts"
        )
    if not np.isfinite(matrix).all():
        raise ValueError(f"the {kind} similarity provider returned non-finite values")
    return matrix


def ranked_by_similarity(similarities: np.ndarray, k: int, most_similar: bool) -> np.ndarray:
    """Positions of the k most (or least) similar pool rows, in ascending-similarity (prompt) order."""
    similarities = np.asarray(similarities)
    if k > len(similarities):
        raise ValueError(f"{k} demonstrations requested but the demonstration pool has {len(similarities)} examples")
    order = np.argsort(-similarities if most_similar else similarities, kind="stable")[:k]
    return order[::-1] if most_similar else order


def similarity_quantiles(similarities: np.ndarray) -> np.ndarray:
    """Each row's quantile in [0, 1] among the rows: rank / (n - 1), rank 0 = least similar (ties share their
    mean rank); a single row has quantile 1."""
    similarities = np.asarray(similarities, dtype=np.float64)
    n = len(similarities)
    if n <= 1:
        return np.ones(n)
    order = np.argsort(similarities, kind="stable")
    ranks = np.empty(n)
    ranks[order] = np.arange(n, dtype=np.float64)
    values, inverse = np.unique(similarities, return_inverse=True)
    mean_rank = np.bincount(inverse, weights=ranks) / np.bincount(inverse)
    return mean_rank[inverse] / (n - 1)
