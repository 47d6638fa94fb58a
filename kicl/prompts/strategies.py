"""Demonstration strategies: the registry :data:`STRATEGIES` and its seven members.

A strategy is called as ``strategy(test, pool, k, rng, **options)`` and returns the chosen pool index labels in
prompt order (see :func:`register_strategy`); the schema's ``protocol.demo_strategy`` enum names the same seven.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from kicl.prompts.pieces import PromptError
from kicl.prompts.retrieval import ranked_by_similarity, similarity_quantiles

DemoStrategy = Callable[..., np.ndarray]
STRATEGIES: dict[str, DemoStrategy] = {}


def register_strategy(name: str) -> Callable[[DemoStrategy], DemoStrategy]:
    """Decorator adding a demonstration strategy to :data:`STRATEGIES`.

    A strategy is called as ``strategy(test, pool, k, rng, **options)`` with the test example (a row of
    the normalised eval split: text, label, fields), the demonstration pool (normalised DataFrame whose
    index is the row in the demo split), the number of demonstrations, a seeded numpy Generator and the
    options of the call (``n_classes``, and for retrieval strategies e.g. precomputed similarities); it
    returns the chosen pool index labels, in prompt order.
    """

    def register(function: DemoStrategy) -> DemoStrategy:
        STRATEGIES[name] = function
        return function

    return register


@register_strategy("random")
def random_demos(test: pd.Series, pool: pd.DataFrame, k: int, rng: np.random.Generator, **options) -> np.ndarray:
    """k distinct pool examples uniformly at random, in random order (the paper's sampling)."""
    if k > len(pool):
        raise PromptError(f"{k} demonstrations requested but the demonstration pool has {len(pool)} examples")
    return pool.index.to_numpy()[rng.choice(len(pool), size=k, replace=False)]


@register_strategy("class_balanced")
def class_balanced_demos(
    test: pd.Series, pool: pd.DataFrame, k: int, rng: np.random.Generator, n_classes: int | None = None, **options
) -> np.ndarray:
    """k pool examples with per-class counts as equal as possible (the remainder goes to random classes),
    each class sampled uniformly without replacement, then shuffled into a random order."""
    labels = pool["label"].to_numpy()
    n_classes = n_classes or int(labels.max()) + 1
    quota = np.full(n_classes, k // n_classes)
    quota[rng.choice(n_classes, size=k % n_classes, replace=False)] += 1
    chosen = []
    for label, count in enumerate(quota):
        members = np.flatnonzero(labels == label)
        if count > len(members):
            raise PromptError(
                f"class_balanced needs {count} demonstrations of class {label}, the pool has {len(members)}"
            )
        chosen.append(members[rng.choice(len(members), size=count, replace=False)])
    positions = np.concatenate(chosen)
    return pool.index.to_numpy()[positions[rng.permutation(len(positions))]]


def _need_similarities(pool: pd.DataFrame, similarities: np.ndarray | None, name: str) -> np.ndarray:
    if similarities is None or len(similarities) != len(pool):
        raise PromptError(
            f"the {name} strategy needs the test input's similarity to every pool example "
            "(build_prompt_set computes them with a similarity provider)"
        )
    return np.asarray(similarities)


def _retrieved(
    pool: pd.DataFrame, k: int, similarities: np.ndarray | None, most_similar: bool, name: str
) -> np.ndarray:
    """Pool index labels of the k most/least similar rows, by ascending similarity (prompt order)."""
    similarities = _need_similarities(pool, similarities, name)
    try:
        positions = ranked_by_similarity(similarities, k, most_similar)
    except ValueError as error:
        raise PromptError(str(error)) from error
    return pool.index.to_numpy()[positions]


def _register_ranked(name: str, most_similar: bool, doc: str) -> None:
    """Register a strategy that takes the k pool rows ranked highest (or lowest) by the injected similarity."""

    def strategy(
        test: pd.Series,
        pool: pd.DataFrame,
        k: int,
        rng: np.random.Generator,
        similarities: np.ndarray | None = None,
        **options,
    ) -> np.ndarray:
        return _retrieved(pool, k, similarities, most_similar, name)

    strategy.__name__, strategy.__doc__ = f"{name}_demos", doc
    register_strategy(name)(strategy)


_register_ranked(
    "nearest",
    True,
    "The k pool examples most similar to the test input (cosine of sentence embeddings, one value per pool row in "
    "``similarities``), by ascending similarity: the most similar is last, next to the test input.",
)
_register_ranked(
    "farthest", False, "The k pool examples least similar to the test input, by ascending similarity (least first)."
)
_register_ranked(
    "bm25",
    True,
    "The k pool examples with the highest BM25 score of the test input (query) against their text, by ascending "
    "score (the best last); see :mod:`kicl.prompts.bm25`.",
)
_register_ranked(
    "model_kernel",
    True,
    "The k pool examples with the largest prediction similarity P(o|x_test)ᵀP(o|x_i) of the model itself (the "
    "paper's Eq. 9 kernel), by ascending similarity (the most similar last).",
)


@register_strategy("similarity_band")
def similarity_band_demos(
    test: pd.Series,
    pool: pd.DataFrame,
    k: int,
    rng: np.random.Generator,
    similarities: np.ndarray | None = None,
    similarity_band: Sequence[float] = (0.0, 1.0),
    **options,
) -> np.ndarray:
    """k pool examples drawn uniformly without replacement (in drawn order) from the rows whose quantile of encoder
    cosine to the test input (:func:`kicl.prompts.retrieval.similarity_quantiles`) lies in [lo, hi]."""
    similarities = _need_similarities(pool, similarities, "similarity_band")
    lo, hi = (float(v) for v in similarity_band)
    quantiles = similarity_quantiles(similarities)
    members = np.flatnonzero((quantiles >= lo - 1e-12) & (quantiles <= hi + 1e-12))
    if k > len(members):
        raise PromptError(
            f"protocol.similarity_band [{lo}, {hi}]: {len(members)} of the {len(pool)} pool examples lie in the "
            f"band, {k} demonstrations requested; widen the band or raise protocol.retrieval_pool_size"
        )
    return pool.index.to_numpy()[members[rng.choice(len(members), size=k, replace=False)]]
