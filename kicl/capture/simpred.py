"""P(o|x) of an input text run on its own (paper Eq. 9): its context, batching, and the forward passes.

The values are kept and shared across jobs by :class:`kicl.capture.simpred_cache.SimpredCache`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from kicl.capture.batch import forward_batch

log = logging.getLogger(__name__)

SIMPRED_SHARD_FACTOR = 8  # a P(o|x) cache shard holds this many times capture.shard_size inputs (they are short)


def context_ids(tokenizer, meta: dict, mode: str, text: str) -> list[int]:
    """Token ids of the context whose next-token distribution is P(o|x).

    ``raw``: the input text alone; ``template``: the input alone in the prompt template, ending where the label
    would follow (``kicl.prompts.pieces.query_ids``). Both start with the special prefix (e.g. BOS) the prompts have.
    """
    from kicl.prompts.pieces import PieceTokenizer, query_ids

    if mode == "template":
        return query_ids(tokenizer, meta["template"], text)
    prefix = PieceTokenizer(tokenizer).prefix_ids
    return list(prefix) + list(tokenizer(text, add_special_tokens=False)["input_ids"])


def token_budget_batches(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Indices grouped longest first so that (rows × longest row) stays within ``budget`` tokens."""
    order = np.argsort([-n for n in lengths], kind="stable").tolist()
    batches: list[list[int]] = []
    for index in order:
        if batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= budget:
            batches[-1].append(index)
        else:
            batches.append([index])
    return batches


def next_token_probs(model, encoded: Sequence[Sequence[int]], padding_side: str, budget: int, bar=None) -> np.ndarray:
    """Softmax of the next-token logits after each context in ``encoded``: (n, vocab) float32.

    Batches hold as many contexts as fit into ``budget`` padded tokens (:func:`token_budget_batches`);
    ``bar`` (a tqdm bar or None) is advanced by the contexts done.
    """
    probs: np.ndarray | None = None
    for rows in token_budget_batches([len(ids) for ids in encoded], budget):
        result = forward_batch(model, [encoded[r] for r in rows], padding_side=padding_side, capture=False)
        batch = torch.softmax(result.logits.float(), dim=-1).cpu().numpy()
        if probs is None:
            probs = np.empty((len(encoded), batch.shape[-1]), np.float32)
        probs[rows] = batch
        if bar is not None:
            bar.update(len(rows))
    if probs is None:
        raise ValueError("next_token_probs needs at least one context")
    return probs
