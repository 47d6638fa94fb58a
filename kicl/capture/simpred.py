"""P(o|x) of every unique input text run on its own (paper Eq. 9), in resumable shards."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from kicl.capture.batch import forward_batch
from kicl.capture.options import CaptureError

log = logging.getLogger(__name__)

SIMPRED_SHARD_FACTOR = 8  # a P(o|x) shard holds this many times capture.shard_size inputs (they are short)


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


def simpred_phase(
    model, tokenizer, meta: dict, contexts: list[str], parts, options, bar, vocab: int, budget: int
) -> tuple[list[str], int]:
    """P(o|x) of every unique input text, each run on its own (:func:`context_ids`).

    One ``.npy`` shard (inputs × vocab, float32) per ``SIMPRED_SHARD_FACTOR × shard_size`` inputs; batches
    hold as many inputs as fit into ``budget`` padded tokens (the token count of a prompt batch).
    Returns the shard names and the number of inputs per shard.
    """
    per_shard = options.shard_size * SIMPRED_SHARD_FACTOR
    names = [f"simpred-{i:05d}.npy" for i in range(-(-len(contexts) // per_shard))]
    done = set(parts.complete(names))
    log.info("P(o|x): %d unique inputs in %d shards (%d complete)", len(contexts), len(names), len(done))
    for index, name in enumerate(names):
        chunk = contexts[index * per_shard : (index + 1) * per_shard]
        if name in done:
            bar.update(len(chunk))
            continue
        encoded = [context_ids(tokenizer, meta, options.simpred_context, text) for text in chunk]
        for text, ids in zip(chunk, encoded):
            if not ids:
                raise CaptureError(f"input {text!r} tokenizes to nothing; cannot compute P(o|x)")
        probs = np.empty((len(chunk), vocab), np.float32)
        for rows in token_budget_batches([len(ids) for ids in encoded], budget):
            result = forward_batch(model, [encoded[r] for r in rows], padding_side=options.padding_side, capture=False)
            probs[rows] = torch.softmax(result.logits, dim=-1).cpu().numpy()
            bar.update(len(rows))
        parts.write_array(name, probs)
    return names, per_shard
