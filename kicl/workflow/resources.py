"""Memory and wall-time requests for forward-pass jobs on a cluster, from the model and the prompt file.

Slurm kills a job that outgrows its memory or time request, and over-asking delays it in the queue, so the
forward-pass rule derives both from what it will process:

* the model: the exact parameter count, read from the safetensors headers in the model folder (no weights
  are loaded; a formula over config.json is the fallback), and layers, heads and vocabulary from config.json;
* the prompts: the prompt-file contract (``prompts.jsonl``): number of prompts, their token lengths, and the
  unique test/demonstration inputs that are also run on their own for P(o|x);
* the ``capture:`` options (dtype, device, batch and shard size) as resolved from the model manifest.

Estimates are deliberately generous (see the constants); a retry (``attempt`` > 1) asks for proportionally
more. Both functions only read small files, so Snakemake can call them when it schedules the job.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

from kicl.prompts.files import read_prompt_records

BYTES_PER_VALUE = {"float32": 4, "float16": 2, "bfloat16": 2}

# Sustained throughput of the capture forward pass, in FLOP/s (2 x parameters x tokens), deliberately below
# what the hardware reaches: one modern data-centre GPU in 16-bit (A100: 312 TFLOP/s peak) and one x86 core in
# float32 (this project's 2-core CI machine sustains ~95 GFLOP/s per core with SmolLM2 and sdpa).
GPU_FLOPS = 20e12
CPU_FLOPS_PER_THREAD = 30e9
LOAD_MB_PER_S = 200  # reading weights from a shared file system
STORE_MB_PER_S = 50  # compressing and writing the Zarr store
SAFETY = 2.0  # multiplies the compute-time estimate
BASE_MEMORY_MB = 3000  # Python, torch, CUDA context, tokenizer
MIN_RUNTIME_MIN = 15
MIN_MEMORY_MB = 4000


@dataclass(frozen=True)
class ModelSize:
    """What the resource estimates need to know about a model."""

    n_params: int
    n_layers: int
    n_heads: int
    hidden: int
    vocab: int


@dataclass(frozen=True)
class PromptWorkload:
    """What the resource estimates need to know about a prompt file."""

    n_prompts: int
    prompt_tokens: int  # summed over prompts
    max_length: int
    n_contexts: int  # unique inputs run on their own for P(o|x)
    context_tokens: int  # summed over unique inputs (their token spans inside the prompts)


def _first(config: dict, *keys, default=None):
    for key in keys:
        if config.get(key) is not None:
            return config[key]
    return default


def safetensors_parameter_count(folder: str | Path) -> int | None:
    """Number of parameters stored in the folder's ``*.safetensors`` files (headers only); None if none."""
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for path in files:
        with open(path, "rb") as handle:
            (header_length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(header_length))
        total += sum(math.prod(entry["shape"]) for name, entry in header.items() if name != "__metadata__")
    return total


def config_parameter_count(config: dict) -> int:
    """Parameters of a decoder-only transformer estimated from its HF config.json (embeddings, attention with
    grouped KV heads, gated or plain MLP, untied output head)."""
    hidden = _first(config, "hidden_size", "n_embd", "d_model")
    layers = _first(config, "num_hidden_layers", "n_layer", "num_layers")
    vocab = config["vocab_size"]
    heads = _first(config, "num_attention_heads", "n_head")
    kv_heads = _first(config, "num_key_value_heads", default=heads)
    inner = _first(config, "intermediate_size", "n_inner") or 4 * hidden
    gated = config.get("model_type") in {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3"}
    attention = hidden * hidden * 2 + 2 * hidden * (hidden // heads) * kv_heads
    mlp = (3 if gated else 2) * hidden * inner
    head = 0 if config.get("tie_word_embeddings", True) else vocab * hidden
    return int(vocab * hidden + layers * (attention + mlp) + head)


def model_size(folder: str | Path) -> ModelSize:
    """ModelSize of a save_pretrained / Hub snapshot folder."""
    config = json.loads((Path(folder) / "config.json").read_text())
    text = config.get("text_config") or config
    n_params = safetensors_parameter_count(folder) or config_parameter_count(text)
    return ModelSize(
        n_params=n_params,
        n_layers=_first(text, "num_hidden_layers", "n_layer", "num_layers"),
        n_heads=_first(text, "num_attention_heads", "n_head"),
        hidden=_first(text, "hidden_size", "n_embd", "d_model"),
        vocab=text["vocab_size"],
    )


def prompt_workload(prompts_path: str | Path) -> PromptWorkload:
    """PromptWorkload of a ``prompts.jsonl`` file, read and checked by :mod:`kicl.prompts.files`."""
    prompt_tokens = max_length = 0
    contexts: dict[str, int] = {}
    records = read_prompt_records(prompts_path)
    for prompt in records:
        length = len(prompt["input_ids"])
        prompt_tokens += length
        max_length = max(max_length, length)
        start, end = prompt["test_span"]
        contexts.setdefault(prompt["test_text"], end - start)
        for demo in prompt["demos"]:
            start, end = demo["input_span"]
            contexts.setdefault(demo["text"], end - start)
    return PromptWorkload(len(records), prompt_tokens, max_length, len(contexts), sum(contexts.values()))


def attention_store_mb(model: ModelSize, work: PromptWorkload) -> float:
    """Uncompressed size of the store's dominant array, attention (prompt, layer, head, position) float32."""
    return work.n_prompts * model.n_layers * model.n_heads * work.max_length * 4 / 2**20


def forward_memory_mb(
    model: ModelSize,
    work: PromptWorkload,
    dtype: str = "float32",
    device: str = "cpu",
    batch_size: int = 4,
    shard_size: int = 32,
    attempt: int = 1,
) -> int:
    """Host memory (Slurm --mem) for one forward-pass job, in MB, rounded up to 256 MB.

    Weights in ``dtype`` (held once while loading, also on a GPU run), one shard of captured attention twice
    (buffer and file), and on a CPU device the activations of one batch: hidden states with an MLP of ~4x and
    the logits. The sum gets 25 % headroom, times ``attempt`` on retries.
    """
    value_bytes = BYTES_PER_VALUE[dtype]
    weights = model.n_params * value_bytes / 2**20
    shard = 2 * min(shard_size, work.n_prompts) * model.n_layers * model.n_heads * work.max_length * 4 / 2**20
    activations = 0.0
    if device == "cpu":
        per_token = (16 * model.hidden + model.vocab) * 4
        activations = batch_size * work.max_length * per_token / 2**20
    need = 1.25 * (BASE_MEMORY_MB + weights + shard + activations) * attempt
    return max(MIN_MEMORY_MB, int(math.ceil(need / 256) * 256))


def forward_runtime_minutes(
    model: ModelSize,
    work: PromptWorkload,
    dtype: str = "float32",
    device: str = "cpu",
    threads: int = 1,
    attempt: int = 1,
) -> int:
    """Wall-time limit (Slurm -t) for one forward-pass job, in minutes.

    Compute: 2 x parameters FLOPs per token over every prompt and every unique input (plus the last-row
    attention, 2 x layers x hidden x length per token), at GPU_FLOPS on a GPU or CPU_FLOPS_PER_THREAD x threads
    on a CPU, times SAFETY; plus loading the weights and writing the uncompressed store size. Times ``attempt``.
    """
    tokens = work.prompt_tokens + work.context_tokens
    flops = 2 * model.n_params * tokens + 2 * model.n_layers * model.hidden * work.max_length * work.prompt_tokens
    rate = GPU_FLOPS if device.startswith("cuda") else CPU_FLOPS_PER_THREAD * max(1, threads)
    weights_mb = model.n_params * BYTES_PER_VALUE[dtype] / 2**20
    seconds = SAFETY * flops / rate + weights_mb / LOAD_MB_PER_S + attention_store_mb(model, work) / STORE_MB_PER_S
    return max(MIN_RUNTIME_MIN, int(math.ceil(seconds * attempt / 60)))
