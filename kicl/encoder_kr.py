"""Kernel regression with a sentence encoder over the same in-prompt demonstrations (paper Table 2 baselines).

For a prompt with test input x and demonstrations (x_i, y_i), each text is embedded once with the encoder
(sentence-transformers, L2-normalised) and

    ỹ = argmax_y Σ_i w_i · 1[y_i = y],   w_i = cos(e(x), e(x_i))        ("cosine", the paper's raw weights)
                                         w_i = exp(cos(e(x), e(x_i)) / τ) ("softmax", our bandwidth variant)

Raw cosine weights can be negative and barely differ from a vote of the demonstration labels, which is why
the paper's encoder rows are near chance; τ → 0 turns the softmax variant into 1-nearest-demonstration.
Exact ties go to the lowest label id (as in kicl.reconstruction).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from kicl.fileio import atomic_path
from kicl.reconstruction import label_votes

log = logging.getLogger(__name__)
KERNELS = ("cosine", "softmax")


def read_prompt_records(path) -> list[dict]:
    """The records of a prompts.jsonl file (prompt-file contract), in prompt_id order."""
    records = []
    with open(path) as handle:
        for line_no, line in enumerate(handle, 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{line_no}: not valid JSON ({err})") from err
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


def encode_texts(encoder_dir, texts, batch_size: int = 64, device: str = "cpu") -> np.ndarray:
    """L2-normalised sentence embeddings (n, dim) float32 from a local sentence-transformers folder."""
    from sentence_transformers import SentenceTransformer

    encoder_dir = Path(encoder_dir)
    if not (encoder_dir / "modules.json").exists() and not (encoder_dir / "config.json").exists():
        raise FileNotFoundError(f"{encoder_dir} is not a sentence-transformers folder (no modules.json / config.json)")
    model = SentenceTransformer(str(encoder_dir), device=device, local_files_only=True)
    emb = model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
    return np.asarray(emb, dtype=np.float32)


def embed_prompt_file(prompts_jsonl, encoder_dir, out_npz, batch_size: int = 64, device: str = "cpu") -> None:
    """Embed every unique text of a prompt file; write npz with `texts` and `embeddings` atomically."""
    texts = prompt_texts(read_prompt_records(prompts_jsonl))
    log.info("embedding %d unique texts of %s with %s", len(texts), prompts_jsonl, encoder_dir)
    emb = encode_texts(encoder_dir, texts, batch_size, device)
    with atomic_path(out_npz) as tmp:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, texts=np.array(texts, dtype=str), embeddings=emb, encoder=str(encoder_dir))


def kernel_regression(records, texts, embeddings, n_labels: int, tau: float) -> pd.DataFrame:
    """Per-prompt encoder-KR predictions for both kernels (columns pred_cosine, pred_softmax)."""
    if tau <= 0:
        raise ValueError(f"analysis.encoder_kr.tau must be > 0, got {tau}")
    index = {text: i for i, text in enumerate(texts)}
    emb = np.asarray(embeddings, dtype=np.float64)
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True).clip(1e-12)
    n_demos = max((len(rec["demos"]) for rec in records), default=0)
    try:
        test_idx = np.array([index[rec["test_text"]] for rec in records])
        demo_idx = np.full((len(records), n_demos), -1)
        labels = np.full((len(records), n_demos), -1)
        for p, rec in enumerate(records):
            for d, demo in enumerate(rec["demos"]):
                demo_idx[p, d] = index[demo["text"]]
                labels[p, d] = demo["label"]
    except KeyError as err:
        raise ValueError(f"a prompt text is missing from the embeddings file (stale embeddings?): {err}") from err
    cos = np.einsum("pk,pdk->pd", emb[test_idx], emb[demo_idx.clip(0)])
    cos[demo_idx < 0] = np.nan
    weights = {"cosine": cos, "softmax": np.exp((cos - np.nanmax(cos, 1, keepdims=True)) / tau)}
    frame = pd.DataFrame(
        {
            "prompt_id": [rec["prompt_id"] for rec in records],
            "split": [rec["split"] for rec in records],
            "test_index": [rec.get("test_index", -1) for rec in records],
            "gold": [rec["gold"] for rec in records],
            "n_demos": (demo_idx >= 0).sum(1),
        }
    )
    for kernel in KERNELS:
        frame[f"pred_{kernel}"] = label_votes(weights[kernel], labels, n_labels).argmax(-1)
    return frame


def encoder_kr_file(prompts_jsonl, meta_json, embeddings_npz, out_csv, tau: float) -> pd.DataFrame:
    """Encoder-KR predictions for every prompt of a prompt file, written to CSV."""
    records = read_prompt_records(prompts_jsonl)
    n_labels = len(json.loads(Path(meta_json).read_text())["label_names"])
    with np.load(embeddings_npz) as data:
        texts, emb = [str(t) for t in data["texts"]], data["embeddings"]
    frame = kernel_regression(records, texts, emb, n_labels, tau)
    for kernel in KERNELS:
        log.info("%s kernel: accuracy %.4f over %d prompts", kernel, (frame[f"pred_{kernel}"] == frame["gold"]).mean(), len(frame))
    with atomic_path(out_csv) as tmp:
        frame.to_csv(tmp, index=False)
    return frame
