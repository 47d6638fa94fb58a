"""Forward-pass capture: one forward pass per batch of prompts gives everything the analyses read.

The model runs with fused attention (``torch.nn.functional.scaled_dot_product_attention`` through
transformers' attention interface). A registered attention function, :data:`CAPTURE_ATTENTION`, computes the
layer output exactly like ``sdpa`` and additionally recomputes only the last query row,
``softmax(q_last · Kᵀ · scaling + mask)`` in float32, from the layer's own (post-rotary, GQA-grouped)
queries and keys, with the layer's scaling and mask. Full L×L attention is never formed. The same function
gathers keys and values at offsets around each demonstration's label token for the first
``kv_prompts`` prompts; forward hooks on the key projection give the keys before rotary embedding.

Any architecture whose attention goes through ``ALL_ATTENTION_FUNCTIONS`` works (GPT-J, GPT-2, the Llama
family, Qwen2, Mistral, ...); the capture checks after the first batch that every layer was seen and stops
with a clear error otherwise. Per-family knowledge is limited to :func:`_prerope_key_module`.

:func:`run_capture` drives a whole task: P(o|x) of every unique test/demonstration input run on its own
(paper Eq. 9), then the prompts, in shards that a killed run resumes (:class:`kicl.store.writer.ShardDir`), then
the Zarr store (layout in docs/store.md).
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from kicl.prompts.files import read_prompt_set
from kicl.store.writer import POOLINGS, ForwardStoreWriter, ShardDir, atomic_directory, forward_variables

log = logging.getLogger(__name__)

CAPTURE_ATTENTION = "kicl_capture"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
SIMPRED_CONTEXTS = ("raw", "template")
SHARD_FORMAT = 2  # bump when the content of the resumable shards changes, so that old shards are discarded
PADDING_SIDES = ("right", "left")


class CaptureError(ValueError):
    """Bad capture input (prompt file, model, options); raised before the expensive work."""


# --------------------------------------------------------------------------------------------------------------
# The attention function and its per-batch recorder


class _Recorder:
    """Per-batch capture state, filled layer by layer by the capture attention function.

    ``query_index`` (B,) is the padded position of each row's last real token; ``kv_rows`` (Bk,) the batch
    rows whose keys/values are kept and ``kv_positions`` (Bk, S) the padded positions to gather for them.
    """

    def __init__(self, query_index, kv_rows=None, kv_positions=None):
        self.query_index = query_index
        self.kv_rows = kv_rows
        self.kv_positions = kv_positions
        self.rows: list[torch.Tensor] = []
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.keys_prerope: list[torch.Tensor] = []
        self.pending_prerope: dict[int, torch.Tensor] = {}

    def gather_kv(self, states: torch.Tensor) -> torch.Tensor:
        """(B, n_kv, T, d) states -> (Bk, n_kv, S, d) at the kv rows and positions (dtype kept)."""
        rows = states[self.kv_rows]
        index = self.kv_positions[:, None, :, None].expand(-1, rows.shape[1], -1, rows.shape[-1])
        return torch.gather(rows, 2, index)

    def record(self, module, query, key, value, attention_mask, scaling, kwargs) -> None:
        for unsupported in ("position_bias", "s_aux", "sinks", "softcap"):
            if kwargs.get(unsupported) is not None:
                raise CaptureError(
                    f"{type(module).__name__} uses {unsupported!r} in attention, which the last-row capture does not model"
                )
        batch, n_heads, q_len, head_dim = query.shape
        n_kv, kv_len = key.shape[1], key.shape[2]
        if q_len != kv_len:
            raise CaptureError("the capture needs a full forward pass without a key/value cache")
        scale = scaling if scaling is not None else head_dim**-0.5
        rows = torch.arange(batch, device=query.device)
        q_last = query[rows, :, self.query_index].float().reshape(batch, n_kv, n_heads // n_kv, head_dim)
        scores = torch.matmul(q_last, key.float().transpose(-1, -2)).reshape(batch, n_heads, kv_len) * scale
        positions = torch.arange(kv_len, device=query.device)
        causal = positions[None, :] <= self.query_index[:, None]
        scores = scores.masked_fill(~causal[:, None, :], float("-inf"))
        if attention_mask is not None:
            mask = attention_mask
            mask_rows = rows if mask.shape[0] == batch else torch.zeros_like(rows)
            mask_row = mask[mask_rows, :, self.query_index]  # (B, 1 or H, T)
            if mask_row.dtype == torch.bool:
                scores = scores.masked_fill(~mask_row, float("-inf"))
            else:
                scores = scores + mask_row.float()
        self.rows.append(torch.softmax(scores, dim=-1))
        if self.kv_rows is not None:
            self.keys.append(self.gather_kv(key).float())
            self.values.append(self.gather_kv(value).float())
            prerope = self.pending_prerope.pop(id(module), None)
            if prerope is not None:
                self.keys_prerope.append(prerope)


_ACTIVE: _Recorder | None = None


def _capture_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """``sdpa`` attention plus, while a recorder is active, the last query row and keys/values."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    output, _ = sdpa_attention_forward(
        module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
    )
    if _ACTIVE is not None:
        _ACTIVE.record(module, query, key, value, attention_mask, scaling, kwargs)
    return output, None


def register_capture_attention() -> None:
    """Register :data:`CAPTURE_ATTENTION` with transformers (attention function + sdpa-style boolean masks)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(CAPTURE_ATTENTION, _capture_attention)
    AttentionMaskInterface.register(CAPTURE_ATTENTION, sdpa_mask)


# --------------------------------------------------------------------------------------------------------------
# Model preparation


@dataclass(frozen=True)
class ModelShape:
    """What the store needs to know about a model."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    rotary: bool
    vocab_size: int


def _attention_modules(model) -> list[torch.nn.Module]:
    """The self-attention modules in layer order (modules with ``layer_idx`` whose class name says Attention)."""
    found = [
        module
        for module in model.modules()
        if "Attention" in type(module).__name__ and isinstance(getattr(module, "layer_idx", None), int)
    ]
    return sorted(found, key=lambda module: module.layer_idx)


def _prerope_key_module(attention: torch.nn.Module) -> tuple[torch.nn.Module | None, torch.nn.Module | None]:
    """(key projection, per-head key norm or None): the key before rotary embedding is norm(projection(x)).

    The norm (Qwen3, Gemma-3) acts on each head vector on its own, so it is applied to the gathered keys only.
    """
    projection = next((m for n in ("k_proj", "key") if isinstance(m := getattr(attention, n, None), torch.nn.Module)), None)
    norm = getattr(attention, "k_norm", None)
    return projection, norm if isinstance(norm, torch.nn.Module) else None


def prepare_model(model) -> ModelShape:
    """Switch a loaded causal LM to the capture attention and hook the pre-rotary keys; return its shape."""
    register_capture_attention()
    if model.config._attn_implementation != CAPTURE_ATTENTION:
        model.set_attn_implementation(CAPTURE_ATTENTION)
    config = model.config.get_text_config()
    attentions = _attention_modules(model)
    n_layers = config.num_hidden_layers
    if len(attentions) != n_layers:
        raise CaptureError(
            f"{type(model).__name__}: found {len(attentions)} attention modules for {n_layers} layers; "
            "this architecture is not supported by the capture"
        )
    n_heads = config.num_attention_heads
    n_kv_heads = getattr(config, "num_key_value_heads", None) or n_heads
    head_dim = getattr(attentions[0], "head_dim", None) or config.hidden_size // n_heads
    rotary = any("Rotary" in type(module).__name__ for module in model.modules())
    if rotary:
        for attention in attentions:
            projection, norm = _prerope_key_module(attention)
            if projection is None:
                raise CaptureError(f"{type(attention).__name__}: no key projection found for pre-rotary keys")
            if not getattr(projection, "_kicl_prerope_hooked", False):
                projection.register_forward_hook(_prerope_hook(attention, norm, head_dim))
                projection._kicl_prerope_hooked = True
    return ModelShape(n_layers, n_heads, n_kv_heads, head_dim, rotary, model.get_output_embeddings().out_features)


def _prerope_hook(attention: torch.nn.Module, norm: torch.nn.Module | None, head_dim: int):
    """Forward hook on a key projection: keep its output at the kv rows/positions (normed where the model norms)."""

    def hook(_module, _inputs, output):
        recorder = _ACTIVE
        if recorder is None or recorder.kv_rows is None:
            return
        states = output.reshape(output.shape[0], output.shape[1], -1, head_dim).transpose(1, 2)
        keys = recorder.gather_kv(states)
        recorder.pending_prerope[id(attention)] = (norm(keys) if norm is not None else keys).float()

    return hook


# --------------------------------------------------------------------------------------------------------------
# One batch


@dataclass
class BatchResult:
    """Outputs of one batch, in each prompt's own (unpadded) coordinates."""

    logits: torch.Tensor  # (B, V) float32, next-token logits at each prompt's last token
    rows: list[np.ndarray] | None = None  # per prompt: (layers, heads, length) float32
    keys: np.ndarray | None = None  # (Bk, layers, n_kv, S, head_dim)
    values: np.ndarray | None = None
    keys_prerope: np.ndarray | None = None


def forward_batch(
    model,
    sequences: Sequence[Sequence[int]],
    *,
    padding_side: str = "right",
    capture: bool = True,
    kv_rows: Sequence[int] = (),
    kv_positions: np.ndarray | None = None,
    n_layers: int | None = None,
) -> BatchResult:
    """Run one padded batch; return last-token logits and, with ``capture``, last-row attention and keys/values.

    Right padding runs without a mask (every real token only sees real tokens under the causal mask) and
    positions 0..T-1; left padding passes the padding mask and positions counted from each row's first token.
    ``kv_positions`` (len(kv_rows), S) are unpadded token positions (already inside the prompt).
    """
    global _ACTIVE
    if padding_side not in PADDING_SIDES:
        raise CaptureError(f"capture.padding_side must be one of {PADDING_SIDES}, got {padding_side!r}")
    device = model.device
    lengths = torch.tensor([len(s) for s in sequences])
    batch, width = len(sequences), int(lengths.max())
    offsets = width - lengths if padding_side == "left" else torch.zeros_like(lengths)
    # padding repeats a row's first (left) or last (right) token: never read, and no pad-token warnings
    input_ids = torch.empty(batch, width, dtype=torch.long)
    for row, (sequence, offset) in enumerate(zip(sequences, offsets.tolist())):
        input_ids[row] = sequence[0] if padding_side == "left" else sequence[-1]
        input_ids[row, offset : offset + len(sequence)] = torch.as_tensor(sequence, dtype=torch.long)
    if padding_side == "left":
        attention_mask = (torch.arange(width)[None, :] >= offsets[:, None]).long()
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        attention_mask = attention_mask.to(device)
    else:
        attention_mask = None
        position_ids = torch.arange(width)[None, :].expand(batch, width)
    query_index = (offsets + lengths - 1).to(device)
    recorder = None
    if capture:
        kv_rows_t = kv_pos_t = None
        if len(kv_rows):
            kv_rows_t = torch.as_tensor(list(kv_rows), dtype=torch.long, device=device)
            shift = offsets[torch.as_tensor(list(kv_rows), dtype=torch.long)][:, None]
            kv_pos_t = (torch.as_tensor(kv_positions, dtype=torch.long) + shift).to(device)
        recorder = _Recorder(query_index, kv_rows_t, kv_pos_t)
    _ACTIVE = recorder
    try:
        with torch.inference_mode():
            out = model(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask,
                position_ids=position_ids.to(device),
                logits_to_keep=query_index[:, None],
                use_cache=False,
            )
    finally:
        _ACTIVE = None
    result = BatchResult(logits=out.logits[:, -1, :].float())
    if recorder is None:
        return result
    if n_layers is not None and len(recorder.rows) != n_layers:
        raise CaptureError(
            f"{type(model).__name__}: the capture saw {len(recorder.rows)} of {n_layers} attention layers; "
            "this architecture does not route attention through transformers' attention interface"
        )
    rows = torch.stack(recorder.rows, dim=1).cpu().numpy()  # (B, layers, heads, width)
    result.rows = [rows[b, :, :, o : o + n] for b, (o, n) in enumerate(zip(offsets.tolist(), lengths.tolist()))]
    if len(kv_rows):
        result.keys = torch.stack(recorder.keys, dim=1).cpu().numpy()
        result.values = torch.stack(recorder.values, dim=1).cpu().numpy()
        if recorder.keys_prerope:
            result.keys_prerope = torch.stack(recorder.keys_prerope, dim=1).cpu().numpy()
    return result


# --------------------------------------------------------------------------------------------------------------
# Per-prompt reductions


def kernel_weights(attention: np.ndarray, input_start: np.ndarray, label_pos: np.ndarray) -> np.ndarray:
    """(layers, heads, length) attention row -> (pooling, layers, heads, demo) kernel weights.

    Pooling over positions ``input_start .. label_pos`` inclusive (max, mean, sum) and the label token alone;
    NaN for demonstrations marked missing (start < 0).
    """
    n_layers, n_heads, _ = attention.shape
    out = np.full((len(POOLINGS), n_layers, n_heads, len(input_start)), np.nan, np.float32)
    for demo, (start, label) in enumerate(zip(input_start.tolist(), label_pos.tolist())):
        if start < 0:
            continue
        span = attention[:, :, start : label + 1]
        out[0, :, :, demo] = span.max(-1)
        out[1, :, :, demo] = span.mean(-1)
        out[2, :, :, demo] = span.sum(-1)
        out[3, :, :, demo] = attention[:, :, label]
    return out


def kv_positions(label_pos: Sequence[int], offsets: Sequence[int], length: int, n_demos: int):
    """Positions label_pos + offset per (demo, offset), flattened, clipped into the prompt, and a validity mask."""
    positions = np.full((n_demos, len(offsets)), -1, np.int64)
    if len(label_pos):
        positions[: len(label_pos)] = np.asarray(label_pos)[:, None] + np.asarray(offsets)[None, :]
    valid = (positions >= 0) & (positions < length)
    if n_demos > len(label_pos):
        valid[len(label_pos) :] = False
    return np.clip(positions, 0, length - 1).reshape(-1), valid


# --------------------------------------------------------------------------------------------------------------
# Options, inputs and validation


@dataclass(frozen=True)
class CaptureOptions:
    """The ``capture:`` config section (see schemas/config.schema.yaml), resolved."""

    dtype: str = "float32"
    device: str = "cpu"
    batch_size: int = 4
    shard_size: int = 32
    kv_prompts: int = 16
    kv_offsets: tuple[int, ...] = (-1, 0, 1, 2, 3)
    simpred_context: str = "raw"
    padding_side: str = "right"

    @classmethod
    def from_config(cls, capture: dict, manifest: dict | None = None) -> "CaptureOptions":
        """Resolve ``auto`` dtype/device from the model manifest (then float32 / cuda-if-available)."""
        manifest = manifest or {}
        values = {k: v for k, v in capture.items() if k in cls.__dataclass_fields__}
        if values.get("dtype", "auto") == "auto":
            values["dtype"] = manifest.get("dtype") if manifest.get("dtype") in DTYPES else "float32"
        if values.get("device", "auto") == "auto":
            device = manifest.get("device", "auto")
            values["device"] = device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        if "kv_offsets" in values:
            values["kv_offsets"] = tuple(values["kv_offsets"])
        options = cls(**values)
        options.check()
        return options

    def check(self) -> None:
        if self.dtype not in DTYPES:
            raise CaptureError(f"capture.dtype must be one of {sorted(DTYPES)} or auto, got {self.dtype!r}")
        if self.simpred_context not in SIMPRED_CONTEXTS:
            raise CaptureError(f"capture.simpred_context must be one of {SIMPRED_CONTEXTS}, got {self.simpred_context!r}")
        if self.padding_side not in PADDING_SIDES:
            raise CaptureError(f"capture.padding_side must be one of {PADDING_SIDES}, got {self.padding_side!r}")
        for key in ("batch_size", "shard_size"):
            if getattr(self, key) < 1:
                raise CaptureError(f"capture.{key} must be >= 1")
        if self.kv_prompts < 0 or not self.kv_offsets:
            raise CaptureError("capture.kv_prompts must be >= 0 and capture.kv_offsets non-empty")


def read_prompts(meta_path: str | Path, prompts_path: str | Path) -> tuple[dict, list[dict]]:
    """Read and check a prompt set (meta.json + prompts.jsonl): :func:`kicl.prompts.files.read_prompt_set`."""
    return read_prompt_set(meta_path, prompts_path)


def context_ids(tokenizer, meta: dict, mode: str, text: str) -> list[int]:
    """Token ids of the context whose next-token distribution is P(o|x).

    ``raw``: the input text alone; ``template``: the input alone in the prompt template, ending where the label
    would follow (``kicl.prompts.build.query_ids``). Both start with the special prefix (e.g. BOS) the prompts have.
    """
    from kicl.prompts.build import PieceTokenizer, query_ids

    if mode == "template":
        return query_ids(tokenizer, meta["template"], text)
    prefix = PieceTokenizer(tokenizer).prefix_ids
    return list(prefix) + list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _fingerprint(*parts) -> str:
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            digest.update(part.read_bytes())
        else:
            digest.update(json.dumps(part, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _versions() -> dict:
    import numcodecs
    import transformers
    import zarr

    import kicl

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "zarr": zarr.__version__,
        "numcodecs": numcodecs.__version__,
        "kicl": getattr(kicl, "__version__", "0.1.0"),
    }


# --------------------------------------------------------------------------------------------------------------
# A whole task


def _progress(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, ascii=True, mininterval=5.0, dynamic_ncols=False)


SIMPRED_SHARD_FACTOR = 8  # a P(o|x) shard holds this many times capture.shard_size inputs (they are short)


def _token_budget_batches(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Indices grouped longest first so that (rows × longest row) stays within ``budget`` tokens."""
    order = np.argsort([-n for n in lengths], kind="stable").tolist()
    batches: list[list[int]] = []
    for index in order:
        if batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= budget:
            batches[-1].append(index)
        else:
            batches.append([index])
    return batches


def _simpred_phase(model, tokenizer, meta: dict, contexts: list[str], parts: ShardDir, options: CaptureOptions,
                   bar, vocab: int, budget: int) -> tuple[list[str], int]:
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
        for rows in _token_budget_batches([len(ids) for ids in encoded], budget):
            result = forward_batch(model, [encoded[r] for r in rows], padding_side=options.padding_side, capture=False)
            probs[rows] = torch.softmax(result.logits, dim=-1).cpu().numpy()
            bar.update(len(rows))
        parts.write_array(name, probs)
    return names, per_shard


def _prompt_shard(model, shape: ModelShape, prompts: list[dict], meta: dict, options: CaptureOptions,
                  n_demos: int, simpred) -> dict[str, np.ndarray]:
    """All per-prompt outputs of one shard of prompts (dict of arrays with the shard's prompts first)."""
    n = len(prompts)
    width = max(len(p["input_ids"]) for p in prompts)
    label_ids = torch.as_tensor(meta["label_token_ids"], dtype=torch.long)
    offsets = list(options.kv_offsets)
    out = {
        "attention": np.full((n, shape.n_layers, shape.n_heads, width), np.nan, np.float32),
        "label_logits": np.empty((n, len(label_ids)), np.float32),
        "kernel_weight": np.empty((n, len(POOLINGS), shape.n_layers, shape.n_heads, n_demos), np.float32),
        "sim_pred": np.full((n, n_demos), np.nan, np.float32),
        "demo_top_token": np.full((n, n_demos), -1, np.int64),
        "test_top_token": np.empty(n, np.int64),
    }
    kv_local = [i for i, p in enumerate(prompts) if p["prompt_id"] < options.kv_prompts]
    kv_shape = (len(kv_local), shape.n_layers, shape.n_kv_heads, n_demos, len(offsets), shape.head_dim)
    kv_names = ["keys", "values"] + (["keys_prerope"] if shape.rotary else [])
    for name in kv_names:
        out[name] = np.full(kv_shape, np.nan, np.float32)
    kv_slot = {local: slot for slot, local in enumerate(kv_local)}
    order = np.argsort([-len(p["input_ids"]) for p in prompts], kind="stable")
    for start in range(0, n, options.batch_size):
        members = order[start : start + options.batch_size].tolist()
        kv_members = [b for b, local in enumerate(members) if local in kv_slot]
        positions, valid = [], []
        for b in kv_members:
            prompt = prompts[members[b]]
            pos, ok = kv_positions([d["label_pos"] for d in prompt["demos"]], offsets, len(prompt["input_ids"]), n_demos)
            positions.append(pos)
            valid.append(ok)
        result = forward_batch(
            model, [prompts[m]["input_ids"] for m in members], padding_side=options.padding_side,
            kv_rows=kv_members, kv_positions=np.array(positions) if positions else None,
            n_layers=shape.n_layers,
        )  # fmt: skip
        out["label_logits"][members] = result.logits.cpu()[:, label_ids].numpy()
        for b, local in enumerate(members):
            row = result.rows[b]
            out["attention"][local, :, :, : row.shape[-1]] = row
            demos = prompts[local]["demos"]
            starts = np.full(n_demos, -1, np.int64)
            labels = np.full(n_demos, -1, np.int64)
            starts[: len(demos)] = [d["input_span"][0] for d in demos]
            labels[: len(demos)] = [d["label_pos"] for d in demos]
            out["kernel_weight"][local] = kernel_weights(row, starts, labels)
        for k, b in enumerate(kv_members):
            slot = kv_slot[members[b]]
            mask = valid[k]
            for name, values in (("keys", result.keys), ("values", result.values), ("keys_prerope", result.keys_prerope)):
                if name in out:
                    # (layers, n_kv, demos*offsets, d) -> (layers, n_kv, demos, offsets, d)
                    block = values[k].reshape(shape.n_layers, shape.n_kv_heads, n_demos, len(offsets), shape.head_dim)
                    out[name][slot] = np.where(mask[None, None, :, :, None], block, np.nan)
    for local, prompt in enumerate(prompts):
        p_test = simpred(prompt["test_text"])
        out["test_top_token"][local] = int(np.argmax(p_test))
        for d, demo in enumerate(prompt["demos"]):
            p_demo = simpred(demo["text"])
            out["sim_pred"][local, d] = np.dot(p_test.astype(np.float64), p_demo.astype(np.float64))
            out["demo_top_token"][local, d] = int(np.argmax(p_demo))
    return out


def run_capture(
    meta_path: str | Path,
    prompts_path: str | Path,
    manifest: str | Path | dict,
    store_path: str | Path,
    capture: dict,
    *,
    parts_path: str | Path | None = None,
    config_attrs: dict | None = None,
    threads: int | None = None,
    on_shard_done: Callable[[str], None] | None = None,
) -> Path:
    """Capture a whole prompt set into the Zarr store ``store_path`` (resumable; see the module docstring).

    ``manifest`` is the model manifest (kicl.data.models) or a dict with at least ``path`` (a HF folder);
    ``capture`` the ``capture:`` config section; ``config_attrs`` the resolved config recorded in the store.
    Work lands in ``parts_path`` (default: ``<store>.parts`` next to the store), removed after success.
    """
    from kicl.data.models import load_model, load_tokenizer, read_manifest

    store_path = Path(store_path)
    parts_path = Path(parts_path) if parts_path else store_path.with_name(store_path.stem + ".parts")
    manifest = read_manifest(manifest)
    options = CaptureOptions.from_config(capture, manifest)
    meta, prompts = read_prompts(meta_path, prompts_path)
    if threads:
        torch.set_num_threads(threads)
    tokenizer = load_tokenizer(manifest)
    register_capture_attention()
    model = load_model(manifest, dtype=options.dtype, device=options.device, attn_implementation=CAPTURE_ATTENTION)
    shape = prepare_model(model)
    where = f"task {meta.get('task')!r}, model {meta.get('model')!r}"
    bad = [t for t in meta["label_token_ids"] if not 0 <= t < shape.vocab_size]
    if bad:
        raise CaptureError(f"{where}: label_token_ids {bad} are outside the vocabulary of {shape.vocab_size}")
    limit = getattr(model.config.get_text_config(), "max_position_embeddings", None) or getattr(
        model.config, "n_positions", None
    )
    longest = max(len(p["input_ids"]) for p in prompts)
    if limit and longest > limit:
        raise CaptureError(f"{where}: the longest prompt has {longest} tokens, over the model's {limit}")

    fingerprint = _fingerprint(
        Path(meta_path), Path(prompts_path), asdict(options), manifest, _versions(), SHARD_FORMAT, SIMPRED_SHARD_FACTOR
    )
    parts = ShardDir(parts_path, fingerprint)
    contexts = list(dict.fromkeys(text for p in prompts for text in [p["test_text"], *(d["text"] for d in p["demos"])]))
    shard_names = [f"shard-{i // options.shard_size:05d}.npz" for i in range(0, len(prompts), options.shard_size)]
    done = parts.complete(shard_names)
    log.info(
        "%s: %d prompts in %d shards (%d complete), %s on %s, batch %d, parts in %s",
        where, len(prompts), len(shard_names), len(done), options.dtype, options.device, options.batch_size, parts_path,
    )  # fmt: skip
    bar = _progress(len(contexts) + len(prompts), desc=f"forward {meta.get('model')}/{meta.get('task')}")
    budget = options.batch_size * longest
    simpred_names, per_shard = _simpred_phase(model, tokenizer, meta, contexts, parts, options, bar, shape.vocab_size, budget)
    tables = [parts.map_array(name) for name in simpred_names]
    context_row = {text: divmod(i, per_shard) for i, text in enumerate(contexts)}

    def simpred(text: str) -> np.ndarray:
        shard, row = context_row[text]
        return np.asarray(tables[shard][row])

    n_demos = max(len(p["demos"]) for p in prompts)
    for index, name in enumerate(shard_names):
        members = prompts[index * options.shard_size : (index + 1) * options.shard_size]
        if name not in done:
            parts.write_arrays(name, _prompt_shard(model, shape, members, meta, options, n_demos, simpred))
            if on_shard_done is not None:
                on_shard_done(name)
        bar.update(len(members))
    bar.close()
    del tables

    _assemble(store_path, parts, shard_names, prompts, meta, manifest, options, shape, n_demos, config_attrs)
    parts.remove()
    log.info("%s: wrote %s", where, store_path)
    return store_path


def _assemble(store_path, parts, shard_names, prompts, meta, manifest, options, shape, n_demos, config_attrs):
    """Write the finished store from the shards (under a temporary name, renamed at the end)."""
    n, width = len(prompts), max(len(p["input_ids"]) for p in prompts)
    n_kv = min(options.kv_prompts, n)
    variables = forward_variables(shape.rotary, with_kv=n_kv > 0)
    sizes = {
        "prompt": n, "layer": shape.n_layers, "head": shape.n_heads, "kv_head": shape.n_kv_heads,
        "position": width, "label": len(meta["label_names"]), "demo": n_demos, "pooling": len(POOLINGS),
        "kv_prompt": n_kv, "offset": len(options.kv_offsets), "head_dim": shape.head_dim,
    }  # fmt: skip
    coords = {
        "prompt": np.arange(n), "layer": np.arange(shape.n_layers), "head": np.arange(shape.n_heads),
        "kv_head": np.arange(shape.n_kv_heads), "position": np.arange(width), "demo": np.arange(n_demos),
        "label": np.array(meta["label_names"], dtype=str), "pooling": np.array(POOLINGS, dtype=str),
    }  # fmt: skip
    if n_kv:
        coords.update(kv_prompt=np.arange(n_kv), offset=np.array(options.kv_offsets, dtype=np.int64))
    attrs = {
        "kicl_store": "forward",
        "task": meta.get("task"),
        "model": meta.get("model"),
        "model_id": manifest.get("id", manifest.get("path")),
        "model_revision": manifest.get("revision"),
        "model_commit": manifest.get("commit"),
        "architecture": manifest.get("architecture"),
        "tokenizer": meta.get("tokenizer"),
        "label_names": meta["label_names"],
        "verbalizers": meta.get("verbalizers"),
        "label_token_ids": meta["label_token_ids"],
        "readout": meta.get("readout"),
        "seeds": {"protocol": meta.get("seed")},
        "prompt_meta": meta,
        "capture": asdict(options),
        "rotary": shape.rotary,
        "config": config_attrs or {},
        "versions": _versions(),
    }

    def per_prompt(key, default=-1, dtype=np.int64):
        return np.array([p.get(key, default) for p in prompts], dtype=dtype)

    def per_demo(getter, fill, dtype):
        table = np.full((n, n_demos), fill, dtype=dtype)
        for i, p in enumerate(prompts):
            for d, demo in enumerate(p["demos"]):
                table[i, d] = getter(demo)
        return table

    with atomic_directory(store_path) as tmp:
        writer = ForwardStoreWriter(tmp, sizes, coords, variables, attrs)
        static = {
            "length": np.array([len(p["input_ids"]) for p in prompts], dtype=np.int64),
            "split": np.array([p.get("split", "") for p in prompts], dtype=str),
            "test_index": per_prompt("test_index"),
            "gold": per_prompt("gold"),
            "test_start": np.array([p["test_span"][0] for p in prompts], dtype=np.int64),
            "test_end": np.array([p["test_span"][1] for p in prompts], dtype=np.int64),
            "prompt_text": np.array([p.get("text", "") for p in prompts], dtype=str),
            "test_text": np.array([p["test_text"] for p in prompts], dtype=str),
            "demo_label": per_demo(lambda d: d["label"], -1, np.int64),
            "demo_pool_index": per_demo(lambda d: d.get("pool_index", -1), -1, np.int64),
            "input_start": per_demo(lambda d: d["input_span"][0], -1, np.int64),
            "input_end": per_demo(lambda d: d["input_span"][1], -1, np.int64),
            "label_pos": per_demo(lambda d: d["label_pos"], -1, np.int64),
            "delim_start": per_demo(lambda d: d["delim_span"][0], -1, np.int64),
            "delim_end": per_demo(lambda d: d["delim_span"][1], -1, np.int64),
            "block_start": per_demo(lambda d: d["block_span"][0], -1, np.int64),
            "block_end": per_demo(lambda d: d["block_span"][1], -1, np.int64),
            "demo_text": per_demo(lambda d: d["text"], "", object).astype(str),
        }
        for name, values in static.items():
            writer.write(name, 0, values)
        kv_start = 0
        for index, name in enumerate(shard_names):
            shard = parts.read_arrays(name)
            start = index * options.shard_size
            writer.write("attention", start, shard["attention"])
            for key in ("label_logits", "kernel_weight", "sim_pred", "demo_top_token", "test_top_token"):
                writer.write(key, start, shard[key])
            writer.write("prediction", start, shard["label_logits"].argmax(axis=1).astype(np.int64))
            n_shard_kv = len(shard["keys"])
            for key in ("keys", "values", "keys_prerope"):
                if key in variables and n_shard_kv:
                    writer.write(key, kv_start, shard[key])
            kv_start += n_shard_kv
        writer.finalize()
