"""Tiny random causal LMs, a tiny byte-level BPE tokenizer and synthetic prompt files for the forward-stage tests.

Prompts are built by ``kicl.prompts.build.build_prompt`` (the prompts stage's own segment maps) from random
"sentences" of words ``w0 .. w39`` in the template ``Input: <x> Output: <label>`` with newline delimiters.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

LABELS = ["negative", "positive"]
VERBALIZERS = [" negative", " positive"]
CONTENT = [f"w{i}" for i in range(40)]
TEMPLATE = {"input_prefix": "Input: ", "output_prefix": " Output:", "delimiter": "\n"}
VOCAB = 320


def make_tokenizer(folder: Path):
    """A byte-level BPE tokenizer (lossless, ' positive'/' negative' single tokens) saved to ``folder``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = np.random.default_rng(0)
    corpus = [f"Input: {' '.join(rng.choice(CONTENT, 4))} Output:{rng.choice(VERBALIZERS)}\n" for _ in range(400)]
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=["<pad>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    core.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>")
    assert len(tokenizer) <= VOCAB
    tokenizer.save_pretrained(folder)
    return tokenizer


def tiny_config(family: str, vocab: int = VOCAB, max_positions: int = 512):
    """A small random config of an architecture family, with attention sharp enough to test against."""
    from transformers import GPT2Config, GPTJConfig, LlamaConfig, Qwen2Config

    common = dict(vocab_size=vocab, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    if family == "gptj":
        return GPTJConfig(
            n_positions=max_positions, n_embd=64, n_layer=2, n_head=4, rotary_dim=8, initializer_range=0.2, **common
        )
    if family == "gpt2":
        return GPT2Config(n_positions=max_positions, n_embd=64, n_layer=2, n_head=4, initializer_range=0.2, **common)
    decoder = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        initializer_range=0.2,
        **common,
    )
    if family == "llama":
        return LlamaConfig(**decoder)
    if family == "qwen2":
        return Qwen2Config(**decoder)
    if family == "gemma3":  # the optional gemma-3-270m: q/k norms, query_pre_attn_scalar, sliding + global layers
        from transformers import Gemma3TextConfig

        return Gemma3TextConfig(head_dim=16, sliding_window=8, query_pre_attn_scalar=24, **decoder)
    if family == "mistral":  # sliding-window attention: the mask, not causality alone, limits the last row
        from transformers import MistralConfig

        return MistralConfig(sliding_window=8, **decoder)
    raise ValueError(family)


def make_model_folder(folder: Path, family: str, seed: int = 0) -> dict:
    """Save a tiny random model + tokenizer to ``folder``; return a model manifest for kicl.data.models."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family), attn_implementation="eager")
    model.save_pretrained(folder)
    make_tokenizer(folder)
    return {
        "name": f"tiny-{family}",
        "path": str(folder),
        "id": f"random/{family}",
        "revision": None,
        "dtype": "float32",
        "device": "cpu",
        "architecture": type(model).__name__,
    }


def make_prompts(
    folder: Path,
    model_dir: str | Path,
    n_prompts: int = 10,
    seed: int = 0,
    demos: tuple[int, int] = (2, 4),
    words: tuple[int, int] = (2, 7),
    model: str = "tiny",
    task: str = "toy",
) -> tuple[Path, Path]:
    """Write meta.json + prompts.jsonl with random demonstrations (demo counts vary between prompts)."""
    from transformers import AutoTokenizer

    from kicl.prompts.build import Demo, PieceTokenizer, build_prompt

    pieces = PieceTokenizer(AutoTokenizer.from_pretrained(model_dir), "test prompts")
    rng = np.random.default_rng(seed)
    pool = [" ".join(rng.choice(CONTENT, size=rng.integers(*words))) for _ in range(12)]
    pool_labels = rng.integers(0, 2, size=len(pool))
    records = []
    for pid in range(n_prompts):
        chosen = rng.choice(len(pool), size=rng.integers(demos[0], demos[1] + 1), replace=False)
        demo_list = [Demo(int(i), int(pool_labels[i]), pool[i]) for i in chosen]
        test_text = " ".join(rng.choice(CONTENT, size=rng.integers(*words)))
        record = build_prompt(pieces, TEMPLATE, VERBALIZERS, demo_list, test_text)
        records.append(
            {
                "prompt_id": pid,
                "split": "select" if pid % 3 else "heldout",
                "test_index": 100 + pid,
                "gold": int(rng.integers(0, 2)),
                **record,
            }
        )
    meta = {
        "task": task,
        "model": model,
        "label_names": LABELS,
        "verbalizers": VERBALIZERS,
        "label_token_ids": pieces.label_token_ids(VERBALIZERS, "single_token"),
        "readout": "single_token",
        "template": TEMPLATE,
        "n_demos": demos[1],
        "seed": seed,
        "strategy": "random",
        "tokenizer": str(model_dir),
        "n_select": n_prompts,
        "n_heldout": 0,
        "eval_split": "validation",
        "demo_split": "train",
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "meta.json").write_text(json.dumps(meta))
    with open(folder / "prompts.jsonl", "w") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
    return folder / "meta.json", folder / "prompts.jsonl"


def eager_reference(model_dir: str, sequences, device: str = "cpu"):
    """Per-prompt eager runs without padding: last-row attention (layers, heads, T), logits, cached keys/values."""
    from transformers import AutoModelForCausalLM, DynamicCache

    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager", dtype=torch.float32)
    model.eval()
    out = []
    with torch.inference_mode():
        for sequence in sequences:
            # a cache built without the config keeps every position, also in sliding-window layers
            result = model(torch.tensor([sequence]), output_attentions=True, use_cache=True, cache=DynamicCache())
            rows = np.stack([a[0, :, -1, :].numpy() for a in result.attentions])
            cache = result.cache
            keys = np.stack([layer.keys[0].numpy() for layer in cache.layers])  # (layers, n_kv, T, d)
            values = np.stack([layer.values[0].numpy() for layer in cache.layers])
            out.append({"rows": rows, "logits": result.logits[0, -1].numpy(), "keys": keys, "values": values})
    return model, out
