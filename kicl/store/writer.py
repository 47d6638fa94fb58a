"""The forward store (Zarr v3, one per model and task) and the resumable shard directory behind it.

Layout (documented for users in docs/store.md): every variable has named dimensions, so
``xarray.open_zarr(path)`` gives a Dataset; arrays are chunked along ``prompt`` (or ``kv_prompt``) and
compressed with Blosc-zstd. Floats use NaN and integers -1 where a prompt has no value (positions past its
length, demonstrations it does not have, offsets outside it).

Work in progress lives in a *parts* directory next to the store (outside Snakemake's declared output, so a
failed or killed job keeps it): each shard is written to a temporary name, flushed and atomically renamed,
then a ``.done`` marker holding its size and SHA-256 is written the same way. A shard counts as complete
only when its marker exists and matches the file, so a truncated or half-written shard is recomputed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec

log = logging.getLogger(__name__)

POOLINGS = ("max", "mean", "sum", "label")
MANIFEST = "manifest.json"
TEMP_TAG = ".tmp-"


def sha256_file(path: Path, block: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ShardDir:
    """A directory of completed work units ("shards") that survives a killed run.

    ``fingerprint`` identifies the inputs and options; shards written under another fingerprint are discarded
    when the directory is opened, so a resumed run never mixes results of different configurations.
    """

    def __init__(self, path: str | Path, fingerprint: str):
        self.path = Path(path)
        self.fingerprint = fingerprint
        self.path.mkdir(parents=True, exist_ok=True)
        manifest = self.path / MANIFEST
        previous = json.loads(manifest.read_text())["fingerprint"] if manifest.exists() else None
        if previous is not None and previous != fingerprint:
            log.warning("inputs or options changed since %s was written: discarding its shards", self.path)
            shutil.rmtree(self.path)
            self.path.mkdir(parents=True)
        for stale in self.path.glob(f"*{TEMP_TAG}*"):
            stale.unlink()
        if previous != fingerprint:
            self._atomic_bytes(manifest, json.dumps({"fingerprint": fingerprint}).encode())

    def _atomic_bytes(self, target: Path, data: bytes) -> None:
        tmp = target.with_name(f"{target.name}{TEMP_TAG}{os.getpid()}")
        _fsync_write(tmp, data)
        os.replace(tmp, target)
        _fsync_dir(self.path)

    def _marker(self, name: str) -> Path:
        return self.path / f"{name}.done"

    def is_complete(self, name: str) -> bool:
        """True when ``name`` and its marker exist and the file matches the marker's size and hash."""
        target, marker = self.path / name, self._marker(name)
        if not (target.is_file() and marker.is_file()):
            return False
        try:
            expected = json.loads(marker.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return False
        return target.stat().st_size == expected.get("bytes") and sha256_file(target) == expected.get("sha256")

    def complete(self, names: list[str]) -> list[str]:
        """The subset of ``names`` that are complete."""
        return [name for name in names if self.is_complete(name)]

    def _commit(self, name: str, write) -> None:
        target = self.path / name
        tmp = target.with_name(f"{name}{TEMP_TAG}{os.getpid()}")
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        marker = {"bytes": target.stat().st_size, "sha256": sha256_file(target)}
        self._atomic_bytes(self._marker(name), json.dumps(marker).encode())

    def write_arrays(self, name: str, arrays: Mapping[str, np.ndarray]) -> None:
        """Write a dict of arrays as an uncompressed ``.npz`` shard, atomically, with its marker."""
        self._commit(name, lambda handle: np.savez(handle, **arrays))

    def write_array(self, name: str, array: np.ndarray) -> None:
        """Write one array as a ``.npy`` shard (memory-mappable when read), atomically, with its marker."""
        self._commit(name, lambda handle: np.save(handle, array))

    def read_arrays(self, name: str) -> dict[str, np.ndarray]:
        with np.load(self.path / name) as data:
            return {key: data[key] for key in data.files}

    def map_array(self, name: str) -> np.ndarray:
        return np.load(self.path / name, mmap_mode="r")

    def remove(self) -> None:
        shutil.rmtree(self.path)


@dataclass(frozen=True)
class Variable:
    """One array of the store: its dimensions, dtype and fill value (NaN, -1 or '')."""

    dims: tuple[str, ...]
    dtype: str
    fill: object


def forward_variables(rotary: bool, with_kv: bool) -> dict[str, Variable]:
    """The data variables of a forward store (coordinates excluded)."""
    nan, missing = float("nan"), -1
    variables = {
        "attention": Variable(("prompt", "layer", "head", "position"), "float32", nan),
        "length": Variable(("prompt",), "int64", missing),
        "split": Variable(("prompt",), "str", ""),
        "test_index": Variable(("prompt",), "int64", missing),
        "gold": Variable(("prompt",), "int64", missing),
        "prediction": Variable(("prompt",), "int64", missing),
        "label_logits": Variable(("prompt", "label"), "float32", nan),
        "demo_label": Variable(("prompt", "demo"), "int64", missing),
        "demo_pool_index": Variable(("prompt", "demo"), "int64", missing),
        "kernel_weight": Variable(("prompt", "pooling", "layer", "head", "demo"), "float32", nan),
        "input_start": Variable(("prompt", "demo"), "int64", missing),
        "input_end": Variable(("prompt", "demo"), "int64", missing),
        "label_pos": Variable(("prompt", "demo"), "int64", missing),
        "delim_start": Variable(("prompt", "demo"), "int64", missing),
        "delim_end": Variable(("prompt", "demo"), "int64", missing),
        "block_start": Variable(("prompt", "demo"), "int64", missing),
        "block_end": Variable(("prompt", "demo"), "int64", missing),
        "test_start": Variable(("prompt",), "int64", missing),
        "test_end": Variable(("prompt",), "int64", missing),
        "sim_pred": Variable(("prompt", "demo"), "float32", nan),
        "demo_top_token": Variable(("prompt", "demo"), "int64", missing),
        "test_top_token": Variable(("prompt",), "int64", missing),
        "prompt_text": Variable(("prompt",), "str", ""),
        "test_text": Variable(("prompt",), "str", ""),
        "demo_text": Variable(("prompt", "demo"), "str", ""),
    }
    if with_kv:
        kv_dims = ("kv_prompt", "layer", "kv_head", "demo", "offset", "head_dim")
        variables["keys"] = Variable(kv_dims, "float32", nan)
        variables["values"] = Variable(kv_dims, "float32", nan)
        if rotary:
            variables["keys_prerope"] = Variable(kv_dims, "float32", nan)
    return variables


# Per-prompt arrays of rank >= 3 (attention, kernel weights, keys, values) get one chunk per prompt, so a
# reader of one prompt or a slice of prompts touches only those; small per-prompt tables share chunks.
_SMALL_CHUNK_PROMPTS = 1024


def _chunks(shape: tuple[int, ...]) -> tuple[int, ...]:
    lead = 1 if len(shape) >= 3 else _SMALL_CHUNK_PROMPTS
    return (max(1, min(lead, shape[0])), *(max(1, n) for n in shape[1:]))


class ForwardStoreWriter:
    """Creates a forward store with all variables and coordinates, then takes prompt-range writes."""

    def __init__(
        self,
        path: str | Path,
        sizes: Mapping[str, int],
        coords: Mapping[str, np.ndarray],
        variables: Mapping[str, Variable],
        attrs: Mapping[str, object],
    ):
        self.path = Path(path)
        self.group = zarr.open_group(store=str(self.path), mode="w", zarr_format=3)
        self.group.attrs.update(dict(attrs))
        self.arrays = {}
        for name, values in coords.items():
            self.coordinate(name, values)
        for name, var in variables.items():
            shape = tuple(sizes[d] for d in var.dims)
            self._create(name, var, shape, _chunks(shape))

    def _create(self, name: str, var: Variable, shape: tuple[int, ...], chunks: tuple[int, ...]) -> None:
        is_str = var.dtype == "str"
        self.arrays[name] = self.group.create_array(
            name,
            shape=shape,
            chunks=chunks,
            dtype=str if is_str else var.dtype,
            fill_value=var.fill,
            dimension_names=var.dims,
            compressors=None if is_str else BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle"),
        )

    def coordinate(self, name: str, values: np.ndarray) -> None:
        """Create the coordinate array ``name`` (dimension ``name``) holding ``values``."""
        values = np.asarray(values)
        is_str = values.dtype.kind in "UOT"
        var = Variable((name,), "str" if is_str else str(values.dtype), "" if is_str else 0)
        self._create(name, var, (len(values),), (max(1, len(values)),))
        if len(values):
            self.arrays[name][:] = values

    def write(self, name: str, start: int, values: np.ndarray) -> None:
        """Write ``values`` into variable ``name`` at leading-dimension rows ``start .. start+len``."""
        array = self.arrays[name]
        region = (slice(start, start + len(values)),) + tuple(slice(0, n) for n in np.shape(values)[1:])
        array[region] = values

    def finalize(self) -> None:
        """Consolidate metadata so that readers open the store with a single request."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            zarr.consolidate_metadata(str(self.path))


@contextmanager
def atomic_directory(target: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces ``target`` in one rename."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f"{target.name}{TEMP_TAG}*"):  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)
    tmp = target.with_name(f"{target.name}{TEMP_TAG}{os.getpid()}")
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    _fsync_dir(target.parent)


def open_forward_store(path: str | Path):
    """Open a forward store as an ``xarray.Dataset`` (lazy)."""
    import xarray as xr

    return xr.open_zarr(str(path), consolidated=True)
