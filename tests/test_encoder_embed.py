"""Sentence-encoder embeddings of prompt files and encoder KR from them, with a tiny random encoder (offline)."""

import json
import os

import numpy as np
import pandas as pd
import pytest
from helpers import WORDS

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from kicl.analysis.encoder_embed import embed_prompt_file, prompt_texts, read_prompt_records  # noqa: E402
from kicl.analysis.encoder_kr import encoder_kr_file, kernel_regression  # noqa: E402


def _record(prompt_id, split, gold, test_text, demos):
    """A prompt record of the contract with made-up token ids: 3 tokens per demonstration, 2 for the query."""
    demo_records = [
        {
            "pool_index": pool_index,
            "label": label,
            "text": text,
            "block_span": [3 * i, 3 * i + 3],
            "input_span": [3 * i, 3 * i + 1],
            "label_pos": 3 * i + 1,
            "delim_span": [3 * i + 2, 3 * i + 3],
        }
        for i, (pool_index, label, text) in enumerate(demos)
    ]
    length = 3 * len(demos) + 2
    return {
        "prompt_id": prompt_id,
        "split": split,
        "test_index": prompt_id,
        "gold": gold,
        "n_demos": len(demos),
        "input_ids": list(range(length)),
        "test_text": test_text,
        "test_span": [length - 2, length - 1],
        "demos": demo_records,
    }


@pytest.fixture
def prompt_file(tmp_path):
    rng = np.random.default_rng(0)
    sentences = [" ".join(rng.choice(WORDS, 4)) for _ in range(15)]
    records = []
    for p in range(12):
        demos = rng.choice(len(sentences), 4, replace=False)
        records.append(
            _record(
                p,
                "heldout" if p % 3 else "select",
                int(rng.integers(0, 2)),
                sentences[p % len(sentences)],
                [(int(d), int(d % 2), sentences[d]) for d in demos],
            )
        )
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    meta = tmp_path / "meta.json"
    meta.write_text(
        json.dumps(
            {
                "task": "toy",
                "model": "m",
                "label_names": ["negative", "positive"],
                "verbalizers": [" negative", " positive"],
                "label_token_ids": [5, 6],
                "readout": "single_token",
                "template": {},
            }
        )
    )
    return path, meta


def test_prompt_records_keep_the_contract(prompt_file, tmp_path):
    """The encoder stage reads prompt files through kicl.prompts.files: rows out of order or broken are named."""
    prompts, _ = prompt_file
    lines = prompts.read_text().splitlines()
    shuffled = tmp_path / "shuffled.jsonl"
    shuffled.write_text("\n".join([lines[1], lines[0], *lines[2:]]) + "\n")
    with pytest.raises(ValueError, match=r"shuffled.jsonl, prompt 0: prompt_id 1 is not its row number"):
        read_prompt_records(shuffled)
    record = json.loads(lines[3])
    del record["demos"][1]["text"]
    broken = tmp_path / "broken.jsonl"
    broken.write_text("\n".join([*lines[:3], json.dumps(record), *lines[4:]]) + "\n")
    with pytest.raises(ValueError, match=r"prompt 3, demonstration 1: missing 'text'"):
        read_prompt_records(broken)


def test_embeddings_cover_every_unique_text_normalised(tiny_encoder, prompt_file, tmp_path):
    from sentence_transformers import SentenceTransformer

    prompts, _ = prompt_file
    out = tmp_path / "emb.npz"
    embed_prompt_file(prompts, tiny_encoder, out, batch_size=4)
    records = read_prompt_records(prompts)
    assert [r["prompt_id"] for r in records] == list(range(12))
    with np.load(out) as data:
        texts, emb = list(data["texts"]), data["embeddings"]
    assert texts == prompt_texts(records) and len(set(texts)) == len(texts)
    assert {r["test_text"] for r in records} | {d["text"] for r in records for d in r["demos"]} == set(texts)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    direct = SentenceTransformer(json.loads(tiny_encoder.read_text())["path"], device="cpu").encode(texts)
    direct /= np.linalg.norm(direct, axis=1, keepdims=True)
    np.testing.assert_allclose(emb, direct, atol=1e-5)


def test_encoder_kr_file_matches_kernel_regression(tiny_encoder, prompt_file, tmp_path):
    prompts, meta = prompt_file
    emb_path = tmp_path / "emb.npz"
    embed_prompt_file(prompts, tiny_encoder, emb_path)
    frame = encoder_kr_file(prompts, meta, emb_path, tmp_path / "kr.csv", tau=0.05)
    saved = pd.read_csv(tmp_path / "kr.csv")
    assert list(saved["prompt_id"]) == list(range(12)) and set(saved["split"]) == {"select", "heldout"}
    with np.load(emb_path) as data:
        expected = kernel_regression(
            read_prompt_records(prompts), [str(t) for t in data["texts"]], data["embeddings"], 2, 0.05
        )
    pd.testing.assert_frame_equal(frame.reset_index(drop=True), expected.reset_index(drop=True))


def test_bad_encoder_path_is_named(tmp_path, prompt_file):
    with pytest.raises(FileNotFoundError, match="no_such_encoder"):
        embed_prompt_file(prompt_file[0], tmp_path / "no_such_encoder", tmp_path / "x.npz")
