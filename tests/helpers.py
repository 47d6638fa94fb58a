"""Helpers shared by the test modules, which import from here (never from each other or from conftest).

- the repository and its workflow: ``REPO``, ``copy_workflow``, ``default_config``; the workflow test configs
  under ``tests/configs/`` (``workflow_config``) and the job counts of a dry run (``planned_jobs``);
- the forward stage: tiny random causal LMs, a tiny byte-level BPE tokenizer and synthetic prompt files, built by
  ``kicl.prompts.build.build_prompt`` (the prompts stage's own segment maps) from random "sentences" of words
  ``w0 .. w39`` in the template ``Input: <x> Output: <label>`` with newline delimiters;
- the prompts stage: a GPT-2-style tokenizer trained offline, a task spec, a protocol and the segment-map check;
- retrieval: eval/pool tables with unique texts and a fixed random embedding per text.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path
from string import Template

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
#: what a user needs to run the workflow (kicl itself comes from the venv)
WORKFLOW_ITEMS = ("Snakefile", "config.yaml", "rules", "schemas", "scripts", "report", "envs", "profiles", "presets")


def copy_workflow(destination: Path) -> Path:
    """Copy the workflow files (not results, logs or .snakemake) into ``destination``; return it."""
    destination.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".snakemake")
    for name in WORKFLOW_ITEMS:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, destination / name, ignore=ignore, dirs_exist_ok=True)
        elif source.exists():
            shutil.copy2(source, destination / name)
    return destination


def default_config() -> dict:
    """config.yaml with the schema defaults filled in."""
    from snakemake.utils import validate

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    validate(config, str(REPO / "schemas" / "config.schema.yaml"))
    return config


CONFIGS = Path(__file__).resolve().parent / "configs"


def workflow_config(name: str, **paths) -> dict:
    """The workflow test config ``tests/configs/<name>.yaml``, each ``${key}`` in it replaced by ``paths[key]``."""
    text = Template((CONFIGS / f"{name}.yaml").read_text()).substitute({k: str(v) for k, v in paths.items()})
    return yaml.safe_load(text)


def merge_configs(base: dict, update: dict) -> dict:
    """A new config: ``update`` merged into ``base`` the way Snakemake merges config files (dicts merge, any
    other value replaces); neither argument is changed."""
    merged = copy.deepcopy(base)
    for key, value in update.items():
        both_dicts = isinstance(merged.get(key), dict) and isinstance(value, dict)
        merged[key] = merge_configs(merged[key], value) if both_dicts else copy.deepcopy(value)
    return merged


def planned_jobs(result) -> dict:
    """Job name -> count from the 'Job stats' table of a dry run."""
    jobs = {}
    text = result.stdout + result.stderr
    block = text.split("Job stats:")[-1] if "Job stats:" in text else ""
    for line in block.splitlines():
        match = re.match(r"^([A-Za-z0-9_]+)\s+(\d+)$", line.strip())
        if match and match.group(1) != "total":
            jobs[match.group(1)] = int(match.group(2))
    return jobs


# ---- Forward stage: tiny models, tokenizer and prompt files

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
    import torch
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
    import torch
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


#: the vocabulary of the tiny sentence encoder (the `tiny_encoder` fixture)
WORDS = ["good", "bad", "movie", "film", "great", "terrible", "the", "is", "was", "a", "b", "c"]


# ---- Prompts stage: tokenizer, task spec, protocol, segment maps

SENTENCES = [
    "it 's a charming and often affecting journey .",
    "Unflinchingly bleak and desperate",
    "The Rock is destined to be the 21st Century's new ''Conan''.",
    "naïve, café-style rom-com \u2014 100% “fun”!",
    "a gorgeous , witty , seductive movie .",
    "   padded   with spaces  ",
    "the acting is dull and the plot is thin",
    "Émouvant et drôle ; 好看",
    "@user this is sooo bad :( #fail",
    "What is the full form of .com ?",
]


def gpt2_style_tokenizer(folder):
    """A GPT-2-style byte-level BPE (no prefix space, lossless) trained offline on a few sentences."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    corpus = SENTENCES * 3 + ["Input: x\nOutput: Positive\nOutput: Negative\nPremise: Hypothesis: Yes Maybe No"] * 30
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(corpus, trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>")
    wrapped.save_pretrained(folder)
    return PreTrainedTokenizerFast.from_pretrained(folder)


def spec_with(template=None, verbalizers=(" Negative", " Positive")):
    spec = dict(default_config()["tasks"]["sst2"])
    spec["template"] = dict(spec["template"], text="{text}", **(template or {}))
    spec["verbalizers"] = list(verbalizers)
    return spec


PROTOCOL = {
    "seed": 0,
    "n_demos": 4,
    "demo_strategy": "random",
    "n_select": 8,
    "n_heldout": 4,
    "readout": "single_token",
    "context_policy": "error",
    "max_length": None,
    "dedup_similarity": 0.95,
}


def check_segment_map(tokenizer, meta, record, template, standalone=True):
    """Every span decodes exactly to its piece (on its own for byte-level tokenizers, and always in context:
    the text of tokens [0, end) is the text of tokens [0, start) followed by the piece); spans are ordered,
    disjoint and tile each block."""
    decode = lambda ids: tokenizer.decode(ids, clean_up_tokenization_spaces=False)  # noqa: E731
    ids = record["input_ids"]
    space = template["input_prefix"][len(template["input_prefix"].rstrip(" ")) :]
    prefix = len(meta["special_prefix_ids"])

    def piece(start, end):
        before, through = decode(ids[:start]), decode(ids[:end])
        assert through.startswith(before), (before, through)
        in_context = through[len(before) :]
        if standalone:
            assert decode(ids[start:end]) == in_context
        return in_context

    assert decode(ids) == record["text"]
    assert ids[:prefix] == meta["special_prefix_ids"]
    previous_end = prefix
    for demo in record["demos"]:
        block, inp, delim = demo["block_span"], demo["input_span"], demo["delim_span"]
        assert block[0] == previous_end and block[1] == delim[1]
        assert block[0] < inp[0] < inp[1] < demo["label_pos"] < delim[0] < delim[1]
        assert piece(*inp) == space + demo["text"]
        assert piece(demo["label_pos"], demo["label_pos"] + 1) == meta["verbalizers"][demo["label"]]
        assert ids[demo["label_pos"]] == meta["label_token_ids"][demo["label"]]
        assert piece(*delim) == template["delimiter"]
        assert piece(block[0], inp[0]) + space == template["input_prefix"]
        assert piece(inp[1], demo["label_pos"]) == template["output_prefix"]
        previous_end = block[1]
    test = record["test_span"]
    assert piece(*test) == space + record["test_text"]
    assert piece(previous_end, test[0]) + space == template["input_prefix"]
    assert piece(test[1], len(ids)) == template["output_prefix"]


# ---- Retrieval: toy tables and embeddings


def toy_tables(n_eval=20, n_pool=30):
    """Eval and pool tables with unique texts (so a text identifies its toy embedding)."""
    rng = np.random.default_rng(3)

    def make(n, tag):
        return pd.DataFrame(
            {
                "text": [f"{SENTENCES[i % len(SENTENCES)].strip()} {tag}{i}" for i in range(n)],
                "label": rng.integers(0, 2, n),
            }
        )

    pool = make(n_pool, "p")
    pool.index = np.arange(500, 500 + n_pool)  # pool labels are rows of the demo split, not positions
    return make(n_eval, "e"), pool


class ToyEmbedding:
    """A fixed random (unnormalised) vector per text; counts its calls."""

    def __init__(self, texts, dim=5):
        rng = np.random.default_rng(7)
        self.vectors = {text: rng.normal(size=dim) * rng.uniform(0.5, 3) for text in texts}
        self.calls = 0

    def __call__(self, texts):
        self.calls += 1
        return np.stack([self.vectors[text] for text in texts])


def cosine(a, b):
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
