"""Kernel regression with a sentence encoder over the same in-prompt demonstrations (paper Table 2 baselines).

For a prompt with test input x and demonstrations (x_i, y_i), each text is embedded once with the encoder
(sentence-transformers, L2-normalised) and

    ỹ = argmax_y Σ_i w_i · 1[y_i = y],   w_i = cos(e(x), e(x_i))        ("cosine", the paper's raw weights)
                                         w_i = exp(cos(e(x), e(x_i)) / τ) ("softmax", our bandwidth variant)

Raw cosine weights can be negative and barely differ from a vote of the demonstration labels, which is why
the paper's encoder rows are near chance; τ → 0 turns the softmax variant into 1-nearest-demonstration.
Exact ties go to the lowest label id (kicl.analysis.votes).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from kicl.analysis.votes import label_votes
from kicl.fileio import atomic_path
from kicl.prompts.files import read_prompt_records

log = logging.getLogger(__name__)
KERNELS = ("cosine", "softmax")


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
        log.info(
            "%s kernel: accuracy %.4f over %d prompts",
            kernel,
            (frame[f"pred_{kernel}"] == frame["gold"]).mean(),
            len(frame),
        )
    with atomic_path(out_csv) as tmp:
        frame.to_csv(tmp, index=False)
    return frame
