"""Sentence embeddings of every unique test and demonstration text of a prompt file (for encoder KR).

Needs only the prompt file and the encoder (its manifest from rules/models.smk, or a local
sentence-transformers folder); the embeddings are L2-normalised.
"""

from __future__ import annotations

import logging

import numpy as np

from kicl.data.encoders import encode_texts
from kicl.fileio import atomic_path
from kicl.prompts.files import read_prompt_records

__all__ = ["embed_prompt_file", "encode_texts", "prompt_texts", "read_prompt_records"]

log = logging.getLogger(__name__)


def prompt_texts(records) -> list[str]:
    """Every unique test and demonstration text of the records, in first-seen order."""
    seen = {}
    for rec in records:
        seen.setdefault(rec["test_text"], None)
        for demo in rec["demos"]:
            seen.setdefault(demo["text"], None)
    return list(seen)


def embed_prompt_file(
    prompts_jsonl, encoder, out_npz, batch_size: int = 64, device: str | None = None, cache=None
) -> None:
    """Embed every unique text of a prompt file; write npz with `texts` and `embeddings` atomically.

    ``cache``: the folder of embeddings shared by every job of this encoder (:func:`kicl.data.encoders.encode_texts`).
    """
    texts = prompt_texts(read_prompt_records(prompts_jsonl))
    log.info("embedding %d unique texts of %s with %s", len(texts), prompts_jsonl, encoder)
    emb = encode_texts(encoder, texts, batch_size, device, cache=cache)
    with atomic_path(out_npz) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, texts=np.array(texts, dtype=str), embeddings=emb, encoder=str(encoder))
