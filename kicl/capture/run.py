"""Forward-pass capture of a whole task into its Zarr store (layout in docs/store.md).

The model runs with fused attention (``torch.nn.functional.scaled_dot_product_attention`` through
transformers' attention interface) inside a :class:`kicl.capture.session.CaptureSession`, whose
:class:`kicl.capture.handlers.Recorder` keeps the last query row ``softmax(q_last · Kᵀ · scaling + mask)`` of
every head in float32 (full L×L attention is never formed), and keys and values at offsets around each
demonstration's label token for the first ``kv_prompts`` prompts (before rotary embedding through hooks on
the key projection). Per-family knowledge is limited to kicl.capture.adapters.

:func:`run_capture` drives a whole task: P(o|x) of every unique test/demonstration input run on its own
(paper Eq. 9, kicl.capture.simpred), read from or added to the shared P(o|x) cache
(kicl.capture.simpred_cache), the sum of every prompt's P(o|x_test) (behind ``demo_hubness``), then the
prompts, in shards that a killed run resumes
(:class:`kicl.store.writer.ShardDir`), then the Zarr store. ``capture.dtype: auto`` on a CPU with native
bfloat16 is settled first by an agreement check (kicl.capture.dtype_check). The store's ``prediction`` is the
argmax of the float32 label logits, whatever the model's dtype; ties go to the lowest label index (:func:`predict`).

Modules: options (the ``capture:`` section), adapters (per-family knowledge), model (loading), session (the
attention function and the context manager), handlers (recorder and interventions), batch (one batch, one shard),
simpred (P(o|x)), simpred_cache (P(o|x) shared across jobs), dtype_check (``auto`` → bfloat16 or float32).
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from kicl.capture.adapters import ModelShape
from kicl.capture.batch import (
    BatchResult,
    SummedTestProbs,
    content_free_logits,
    content_free_piece,
    forward_batch,
    predict,
    prompt_shard,
)
from kicl.capture.model import load_capture_model, prepare_model
from kicl.capture.options import PADDING_SIDES, SIMPRED_CONTEXTS, CaptureError, CaptureOptions
from kicl.capture.session import CAPTURE_ATTENTION, CaptureSession, register_capture_attention
from kicl.capture.simpred import context_ids
from kicl.capture.simpred_cache import SimpredCache
from kicl.devices import AUTO_BF16
from kicl.prompts.files import read_prompt_set
from kicl.store.pooling import POOLINGS, kernel_weights, kv_positions
from kicl.store.schema import StoreSizes, layout
from kicl.store.writer import ForwardStoreWriter, ShardDir, atomic_directory, forward_variables

log = logging.getLogger(__name__)

SHARD_FORMAT = 4  # bump when the content of the resumable shards changes, so that old shards are discarded
# per-prompt arrays of a shard copied into the store as they are
SHARD_PER_PROMPT = ("label_logits", "kernel_weight", "sim_pred", "demo_hubness", "demo_top_token", "test_top_token")

__all__ = [
    "CAPTURE_ATTENTION",
    "PADDING_SIDES",
    "POOLINGS",
    "SIMPRED_CONTEXTS",
    "BatchResult",
    "CaptureError",
    "CaptureJob",
    "CaptureOptions",
    "CaptureSession",
    "ModelShape",
    "context_ids",
    "forward_batch",
    "kernel_weights",
    "kv_positions",
    "predict",
    "prepare_model",
    "register_capture_attention",
    "run_capture",
]


def _fingerprint(*parts) -> str:
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            digest.update(part.read_bytes())
        else:
            digest.update(json.dumps(part, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _git_commit() -> str | None:
    """The commit of the kicl checkout the code runs from (None outside a git work tree)."""
    root = Path(__file__).resolve().parents[2]
    try:
        done = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and len(commit) == 40 else None


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
        "kicl": getattr(kicl, "__version__", None),
    }


def _progress(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, ascii=True, mininterval=5.0, dynamic_ncols=False)


def _check_prompts_fit(manifest: dict, meta: dict, prompts: list[dict], where: str) -> int:
    """Raise CaptureError when a label token is outside the vocabulary or a prompt is over the context length
    (read from the model's config, before any weights are loaded); return the longest prompt's length."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(manifest["path"], trust_remote_code=False)
    text = config.get_text_config()
    vocab = text.vocab_size
    bad = [t for t in meta["label_token_ids"] if not 0 <= t < vocab]
    if bad:
        raise CaptureError(f"{where}: label_token_ids {bad} are outside the vocabulary of {vocab}")
    limit = getattr(text, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    longest = max(len(p["input_ids"]) for p in prompts)
    if limit and longest > limit:
        raise CaptureError(f"{where}: the longest prompt has {longest} tokens, over the model's {limit}")
    return longest


@dataclass(frozen=True)
class CaptureJob:
    """How one job runs a capture: where its resumable work lands (``parts_path``, default ``<store>.parts``), the
    shared P(o|x) cache, the workflow's dtype decision, the job's cores, and a callback after each finished shard."""

    parts_path: str | Path | None = None
    simpred_cache: str | Path | None = None
    dtype_decision: str | Path | None = None
    threads: int | None = None
    on_shard_done: Callable[[str], None] | None = None


def run_capture(
    meta_path: str | Path,
    prompts_path: str | Path,
    manifest: str | Path | dict,
    store_path: str | Path,
    capture: dict,
    job: CaptureJob | None = None,
    *,
    config_attrs: dict | None = None,
) -> Path:
    """Capture a whole prompt set into the Zarr store ``store_path`` (resumable; see the module docstring).

    ``manifest`` is the model manifest (kicl.data.models) or a dict with at least ``path`` (a HF folder);
    ``capture`` the ``capture:`` config section; ``config_attrs`` the resolved config recorded in the store.
    ``job`` (:class:`CaptureJob`): work lands in ``parts_path`` (default: ``<store>.parts`` next to the store),
    removed after success. ``dtype_decision``: the JSON record of the workflow's per-model dtype check
    (:func:`kicl.capture.dtype_check.write_dtype_decision`), which settles a ``capture.dtype: auto`` instead of a
    check of this job's own prompts.
    ``simpred_cache``: root of the shared P(o|x) cache (e.g. ``results/simpred/{model}``; kicl.capture.simpred_cache),
    kept after the run; None keeps P(o|x) in the parts folder, for this job alone.
    ``threads``: the job's cores; torch computes with ``capture.intra_op_threads`` unless that is 0
    (:meth:`CaptureOptions.fix_threads`).
    """
    from kicl.data.models import read_manifest

    job = job or CaptureJob()
    store_path = Path(store_path)
    parts_path = Path(job.parts_path) if job.parts_path else store_path.with_name(store_path.stem + ".parts")
    manifest = read_manifest(manifest)
    options = CaptureOptions.from_config(capture, manifest)
    meta, prompts = read_prompt_set(meta_path, prompts_path)
    options.fix_threads(job.threads)
    model, shape, options, dtype_check = _load_model(manifest, options, meta, prompts, job.dtype_decision)
    run = CaptureRun(prompts, meta, manifest, options, shape, max(len(p["demos"]) for p in prompts))
    fingerprint = _fingerprint(
        Path(meta_path), Path(prompts_path), asdict(options), manifest, _versions(), SHARD_FORMAT
    )
    parts = ShardDir(parts_path, fingerprint)
    shard_names, simpred_record = _capture_shards(run, model, parts, job.simpred_cache, job.on_shard_done)
    extra_attrs = {"dtype_check": dtype_check, "simpred": simpred_record}
    _assemble(run, store_path, parts, shard_names, {**_store_attrs(run, config_attrs), **extra_attrs})
    parts.remove()
    log.info("%s: wrote %s", run.where, store_path)
    return store_path


@dataclass(frozen=True)
class CaptureRun:
    """What one capture runs: the prompt set, the model's manifest and shape, and the resolved options."""

    prompts: list[dict]
    meta: dict
    manifest: dict
    options: CaptureOptions
    shape: ModelShape
    n_demos: int

    @property
    def where(self) -> str:
        return f"task {self.meta.get('task')!r}, model {self.meta.get('model')!r}"

    @property
    def width(self) -> int:
        return max(len(p["input_ids"]) for p in self.prompts)


def _load_model(manifest: dict, options: CaptureOptions, meta: dict, prompts: list[dict], dtype_decision):
    """(model, shape, options, dtype check record): ``capture.dtype: auto`` is settled here (the workflow's
    decision file, else a check on these prompts)."""
    where = f"task {meta.get('task')!r}, model {meta.get('model')!r}"
    _check_prompts_fit(manifest, meta, prompts, where)
    if options.dtype != AUTO_BF16:
        return *load_capture_model(manifest, options.dtype, options.device), options, None
    from kicl.capture.dtype_check import settle_dtype

    decision = json.loads(Path(dtype_decision).read_text()) if dtype_decision else None
    model, shape, options, dtype_check = settle_dtype(manifest, options, prompts, meta, decision)
    return model, shape, options, dtype_check


def _capture_shards(run: CaptureRun, model, parts: ShardDir, simpred_cache, on_shard_done) -> tuple[list[str], dict]:
    """P(o|x) of every unique input (cached), then the prompts shard by shard (a finished shard is kept).
    Returns the shard names and the P(o|x) cache record."""
    from kicl.data.models import load_tokenizer

    prompts, meta, options, where = run.prompts, run.meta, run.options, run.where
    tokenizer = load_tokenizer(run.manifest)
    contexts = list(dict.fromkeys(text for p in prompts for text in [p["test_text"], *(d["text"] for d in p["demos"])]))
    shard_names = [f"shard-{i // options.shard_size:05d}.npz" for i in range(0, len(prompts), options.shard_size)]
    done = parts.complete(shard_names)
    log.info(
        "%s: %d prompts in %d shards (%d complete), %s on %s, batch %d, parts in %s",
        where, len(prompts), len(shard_names), len(done), options.dtype, options.device, options.batch_size, parts.path,
    )  # fmt: skip
    bar = _progress(len(contexts) + len(prompts), desc=f"forward {meta.get('model')}/{meta.get('task')}")
    cache = SimpredCache(simpred_cache or parts.path / "simpred", run.manifest, options, tokenizer, meta, model=model)
    reused, computed = cache.fill(contexts, budget=options.batch_size * run.width, bar=bar)
    log.info("%s: P(o|x) of %d unique inputs: %d reused from %s, %d computed", where, len(contexts), reused,
             cache.path, computed)  # fmt: skip
    simpred_record = {"cache": str(cache.path) if simpred_cache else None, "key": cache.key}
    test_sum = SummedTestProbs.of(prompts, cache.row)  # behind demo_hubness: every prompt's test input, up front

    content_free_ids = content_free_piece(tokenizer, meta, options.content_free) if options.calibration else None
    for index, name in enumerate(shard_names):
        members = prompts[index * options.shard_size : (index + 1) * options.shard_size]
        if name not in done:
            arrays = prompt_shard(model, run.shape, members, meta, options, run.n_demos, cache.row, test_sum)
            if options.calibration:
                arrays["label_logits_cf"] = content_free_logits(model, members, meta, options, content_free_ids)
            parts.write_arrays(name, arrays)
            if on_shard_done is not None:
                on_shard_done(name)
        bar.update(len(members))
    bar.close()
    cache.close()  # release the memory-mapped P(o|x) shards before the parts are removed
    return shard_names, simpred_record


def _store_attrs(run: CaptureRun, config_attrs: dict | None) -> dict:
    """The store's attributes: task, model, labels, the prompt set's meta, the capture options and provenance."""
    meta, manifest = run.meta, run.manifest
    return {
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
        "capture": asdict(run.options),
        "rotary": run.shape.rotary,
        "config": config_attrs or {},
        "versions": _versions(),
        "kicl_commit": _git_commit(),
    }


def _prompt_variables(run: CaptureRun) -> dict[str, np.ndarray]:
    """The variables read from the prompt records: lengths, split, gold, test span and texts, demo spans."""
    prompts = run.prompts

    def per_prompt(key, default=-1, dtype=np.int64):
        return np.array([p.get(key, default) for p in prompts], dtype=dtype)

    def per_demo(getter, fill, dtype):
        table = np.full((len(prompts), run.n_demos), fill, dtype=dtype)
        for i, p in enumerate(prompts):
            for d, demo in enumerate(p["demos"]):
                table[i, d] = getter(demo)
        return table

    return {
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


def _assemble(run: CaptureRun, store_path, parts: ShardDir, shard_names: list[str], attrs: dict) -> None:
    """Write the finished store from the prompt records and the shards (under a temporary name, renamed at the end)."""
    options, shape = run.options, run.shape
    n_kv = min(options.kv_prompts, len(run.prompts))
    variables = forward_variables(shape.rotary, with_kv=n_kv > 0, calibrated=options.calibration, hubness=True)
    sizes, coords = layout(
        StoreSizes(
            n_prompts=len(run.prompts), n_layers=shape.n_layers, n_heads=shape.n_heads, n_kv_heads=shape.n_kv_heads,
            n_positions=run.width, label_names=run.meta["label_names"], n_demos=run.n_demos, n_kv_prompts=n_kv,
            offsets=options.kv_offsets, head_dim=shape.head_dim,
        )
    )  # fmt: skip
    with atomic_directory(store_path) as tmp:
        writer = ForwardStoreWriter(tmp, sizes, coords, variables, attrs)
        for name, values in _prompt_variables(run).items():
            writer.write(name, 0, values)
        kv_start = 0
        for index, name in enumerate(shard_names):
            shard = parts.read_arrays(name)
            start = index * options.shard_size
            writer.write("attention", start, shard["attention"])
            for key in SHARD_PER_PROMPT:
                writer.write(key, start, shard[key])
            if options.calibration:
                writer.write("label_logits_cf", start, shard["label_logits_cf"])
            writer.write("prediction", start, predict(shard["label_logits"]))
            n_shard_kv = len(shard["keys"])
            for key in ("keys", "values", "keys_prerope"):
                if key in variables and n_shard_kv:
                    writer.write(key, kv_start, shard[key])
            kv_start += n_shard_kv
        writer.finalize()
