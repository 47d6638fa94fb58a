"""The shared P(o|x) cache: each input text's next-token distribution computed once per model and settings.

P(o|x) (paper Eq. 9; :mod:`kicl.capture.simpred`) depends only on the model, its numerics and the context
token ids, not on the task's prompts or the condition. The cache lives in ``<root>/<key>/`` where ``<key>``
(:func:`cache_key`) fingerprints what changes the values: the model (its manifest without dtype/device, and the
size and modification time of its weight and config files), the dtype, the device type, the padding side,
``capture.simpred_context``, the template when that is ``template``, and the torch and transformers versions.
``<root>/<key>/key.json`` spells the fingerprinted fields out. Entries are keyed by the SHA-256 of the context
token ids (int64).

The folder is not a Snakemake output: a new condition or task that shares inputs with earlier jobs reads their
entries and computes only its new inputs, and no job depends on another through it. Entries are appended,
verified and shared between concurrent jobs by :class:`kicl.row_cache.RowCache`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kicl.capture.options import CaptureError, CaptureOptions
from kicl.capture.simpred import SIMPRED_SHARD_FACTOR, context_ids, next_token_probs
from kicl.row_cache import RowCache

log = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump when the content or layout of a cache shard changes
MODEL_FILES = (".safetensors", ".bin")  # weight files whose size and mtime identify the weights
MODEL_META_FILES = ("config.json", "kicl_source.json", "model.safetensors.index.json")


def model_identity(manifest: dict) -> dict:
    """What identifies a model's weights: its manifest without dtype/device, and its files' sizes and mtimes."""
    identity = {key: value for key, value in manifest.items() if key not in ("dtype", "device")}
    folder = Path(manifest["path"])
    files = {}
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            if path.suffix in MODEL_FILES or path.name in MODEL_META_FILES:
                stat = path.stat()
                files[path.name] = [stat.st_size, stat.st_mtime_ns]
    identity["files"] = files
    return identity


def cache_key_fields(manifest: dict, options: CaptureOptions, template: dict | None = None) -> dict:
    """The fields fingerprinted by :func:`cache_key` (written to ``key.json`` for people)."""
    import torch
    import transformers

    if options.simpred_context == "template" and template is None:
        raise CaptureError("capture.simpred_context is 'template': the P(o|x) cache needs the task's template")
    return {
        "format": CACHE_FORMAT,
        "model": model_identity(manifest),
        "dtype": options.dtype,
        "device_type": options.device.split(":")[0],
        "padding_side": options.padding_side,
        "simpred_context": options.simpred_context,
        "intra_op_threads": options.intra_op_threads,
        "template": template if options.simpred_context == "template" else None,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def cache_key(manifest: dict, options: CaptureOptions, template: dict | None = None) -> str:
    """Folder name of the cache entries valid for this model and these settings (20 hex digits)."""
    fields = cache_key_fields(manifest, options, template)
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:20]


def entry_key(ids: Sequence[int]) -> str:
    """Key of one entry: SHA-256 of the context token ids as int64."""
    return hashlib.sha256(np.asarray(ids, dtype=np.int64).tobytes()).hexdigest()


class SimpredCache:
    """P(o|x) rows of input texts for one (model, settings), read from and appended to ``root/<key>/`` (a
    :class:`kicl.row_cache.RowCache`: shards with unique names, verified on read, shared by concurrent jobs).

    ``options`` are the resolved capture options (dtype must be a concrete dtype); ``meta`` needs ``template``
    when ``options.simpred_context`` is ``template``. ``model`` (optional) is a loaded model in those options'
    dtype and device; without it a model is loaded from ``manifest`` the first time an entry is missing.
    """

    def __init__(self, root, manifest: dict, options: CaptureOptions, tokenizer, meta: dict, *, model=None):
        self.manifest = manifest
        self.options = options
        self.tokenizer = tokenizer
        self.meta = meta
        self.model = model
        self.key = cache_key(manifest, options, meta.get("template"))
        self.path = Path(root) / self.key
        fields = cache_key_fields(manifest, options, meta.get("template"))
        self.rows = RowCache(self.path, fields, what="P(o|x)")
        self._ids: dict[str, list[int]] = {}

    def ids(self, text: str) -> list[int]:
        """The context token ids of ``text`` (:func:`kicl.capture.simpred.context_ids`)."""
        if text not in self._ids:
            ids = context_ids(self.tokenizer, self.meta, self.options.simpred_context, text)
            if not ids:
                raise CaptureError(f"input {text!r} tokenizes to nothing; cannot compute P(o|x)")
            self._ids[text] = ids
        return self._ids[text]

    def missing(self, texts: Sequence[str]) -> list[str]:
        """The unique texts among ``texts`` that have no valid entry, in first-seen order."""
        return [text for text in dict.fromkeys(texts) if self.rows.lookup(entry_key(self.ids(text))) is None]

    def fill(self, texts: Sequence[str], *, budget: int | None = None, shard_inputs: int | None = None, bar=None):
        """Compute and store the entries of ``texts`` that are missing; return (reused, computed) unique counts.

        Inputs are computed in shards of ``shard_inputs`` (default ``SIMPRED_SHARD_FACTOR × shard_size``), each
        written as soon as it is done, so a killed job keeps its finished shards. ``budget``: padded tokens per
        batch (default ``batch_size × 512``). ``bar`` is advanced by every unique input, reused or computed.
        """
        unique = list(dict.fromkeys(texts))
        self.rows.refresh()
        todo = self.missing(unique)
        if bar is not None:
            bar.update(len(unique) - len(todo))
        shard_inputs = shard_inputs or self.options.shard_size * SIMPRED_SHARD_FACTOR
        budget = budget or self.options.batch_size * 512
        for start in range(0, len(todo), shard_inputs):
            chunk = todo[start : start + shard_inputs]
            encoded = [self.ids(text) for text in chunk]
            probs = next_token_probs(self._model(), encoded, self.options.padding_side, budget, bar)
            self.rows.add([entry_key(ids) for ids in encoded], probs)
        return len(unique) - len(todo), len(todo)

    def _model(self):
        if self.model is None:
            from kicl.capture.model import load_capture_model

            self.model, _ = load_capture_model(self.manifest, self.options.dtype, self.options.device)
        return self.model

    def row(self, text: str) -> np.ndarray:
        """P(o|x) of ``text`` (vocab,) float32, memory-mapped; :meth:`fill` it first (KeyError otherwise)."""
        found = self.rows.lookup(entry_key(self.ids(text)))
        if found is None:
            raise KeyError(f"P(o|x) of {text!r} is not in the cache {self.path}; fill() it first")
        return np.asarray(found)

    def get(self, texts: Sequence[str], **fill_options) -> np.ndarray:
        """P(o|x) of each text, (len(texts), vocab) float32; missing entries are computed first (:meth:`fill`)."""
        self.fill(texts, **fill_options)
        return np.stack([self.row(text) for text in texts]) if texts else np.empty((0, 0), np.float32)

    def close(self) -> None:
        """Drop the memory maps (e.g. before the folder is removed)."""
        self.rows.close()


def model_kernel_similarity(
    manifest,
    capture_options,
    cache_root,
    template: dict | None,
    test_texts: Sequence[str],
    pool_texts: Sequence[str],
    threads: int | None = None,
    *,
    pool_block: int = 256,
) -> np.ndarray:
    """The language model's own kernel: P(o|x_test)ᵀ P(o|x_i) for every test and pool text (paper Eq. 9).

    ``manifest``: model manifest (path or dict); ``capture_options``: the ``capture:`` config section (dict) or
    resolved :class:`CaptureOptions`; ``cache_root``: e.g. ``results/simpred/{model}`` (shared with the forward
    passes, so the P(o|x) computed here are not computed again there when the settings agree); ``template``:
    the task's prompt template (used when ``capture.simpred_context`` is ``template``). A ``capture.dtype: auto``
    that could become bfloat16 after the forward pass's prompt check is taken as float32 here (there are no
    prompts yet to check against). Returns (len(test_texts), len(pool_texts)) float64; the pool is read in
    blocks of ``pool_block`` rows.
    """

    from kicl.data.models import load_tokenizer, read_manifest
    from kicl.devices import AUTO_BF16

    manifest = read_manifest(manifest)
    options = capture_options
    if not isinstance(options, CaptureOptions):
        options = CaptureOptions.from_config(options, manifest)
    if options.dtype == AUTO_BF16:
        from dataclasses import replace

        options = replace(options, dtype="float32")
    options.fix_threads(threads)
    cache = SimpredCache(cache_root, manifest, options, load_tokenizer(manifest), {"template": template})
    reused, computed = cache.fill([*test_texts, *pool_texts])
    log.info("model kernel: P(o|x) of %d unique texts, %d reused from %s, %d computed", reused + computed,
             reused, cache.path, computed)  # fmt: skip
    similarity = np.empty((len(test_texts), len(pool_texts)), np.float64)
    if not len(test_texts) or not len(pool_texts):
        return similarity
    queries = cache.get(list(test_texts)).astype(np.float64)
    for start in range(0, len(pool_texts), pool_block):
        block = cache.get(list(pool_texts[start : start + pool_block])).astype(np.float64)
        similarity[:, start : start + len(block)] = queries @ block.T
    cache.close()
    return similarity
