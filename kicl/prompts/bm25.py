"""BM25 similarity provider (the ``bm25`` demonstration strategy), with the bm25s library.

The pool texts are the documents and each test input a query; the score is Okapi BM25 (bm25s defaults: k1 1.5,
b 0.75, Lucene idf) over bm25s's tokenisation (lowercased words of two or more word characters, no stopword list,
no stemming). A query with no indexable word scores 0 against every pool text.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def bm25_similarity(test_texts: Sequence[str], pool_texts: Sequence[str]) -> np.ndarray:
    """(n_test, n_pool) BM25 scores of each test text (query) against each pool text (document)."""
    import bm25s

    scores = np.zeros((len(test_texts), len(pool_texts)), dtype=np.float64)
    if not len(test_texts) or not len(pool_texts):
        return scores
    documents = bm25s.tokenize(list(pool_texts), stopwords=None, show_progress=False, return_ids=False)
    if not any(documents):
        return scores
    retriever = bm25s.BM25()
    retriever.index(documents, show_progress=False)
    queries = bm25s.tokenize(list(test_texts), stopwords=None, show_progress=False, return_ids=False)
    for row, query in enumerate(queries):
        if query:
            scores[row] = retriever.get_scores(list(query))
    return scores
