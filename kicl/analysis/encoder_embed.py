"""Sentence embeddings of every unique test and demonstration text of a prompt file (for encoder KR).

Needs only the prompt file and the encoder (its manifest from rules/models.smk, or a local
sentence-transformers folder); the embeddings are L2-normalised.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from kicl.fileio import atomic_path
from kicl.prompts.build import read_prompts

log = logging.getLogger(__name__)


def read_prompt_records(path) -> list[dict]:
    """The records of a prompts.jsonl file (prompt-file contract), in prompt_id order."""
    records = read_prompts(path)
    for rec in records:
        for key in ("prompt_id", "split", "gold", "test_text", "demos"):
            if key not in rec:
                raise ValueError(f"{path}: prompt record {rec.get('prompt_id', '?')} has no '{key}' (prompt-file contract)")
    return sorted(records, key=lambda rec: rec["prompt_id"])


def prompt_texts(records) -> list[str]:
    """Every unique test and demonstration text of the records, in first-seen order."""
    seen = {}
    for rec in records:
        seen.setdefault(rec["test_text"], None)
        for demo in rec["demos"]:
            seen.setdefault(demo["text"], None)
    return list(seen)


def encode_texts(encoder, texts, batch_size: int = 64, device: str | None = None) -> np.ndarray:
    """L2-normalised sentence embeddings (n, dim) float32; `encoder` = manifest JSON or a local folder."""
    from kicl.data.encoders import load_encoder

    encoder = Path(encoder)
    if encoder.suffix == ".json":
        manifest = json.loads(encoder.read_text())
    elif (encoder / "config.json").exists():
        manifest = {"path": str(encoder)}
    else:
        raise FileNotFoundError(f"{encoder} is neither an encoder manifest (.json) nor a model folder with config.json")
    model = load_encoder(manifest, device=device)
    emb = model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
    return np.asarray(emb, dtype=np.float32)


def embed_prompt_file(prompts_jsonl, encoder, out_npz, batch_size: int = 64, device: str | None = None) -> None:
    """Embed every unique text of a prompt file; write npz with `texts` and `embeddings` atomically."""
    texts = prompt_texts(read_prompt_records(prompts_jsonl))
    log.info("embedding %d unique texts of %s with %s", len(texts), prompts_jsonl, encoder)
    emb = encode_texts(encoder, texts, batch_size, device)
    with atomic_path(out_npz) as tmp:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, texts=np.array(texts, dtype=str), embeddings=emb, encoder=str(encoder))
