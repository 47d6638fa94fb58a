"""The forward store (Zarr v3, one per model and task) and the resumable shard directory behind it.

Layout (documented for users in docs/store.md; the variables are declared in kicl.store.schema): every
variable has named dimensions, so ``xarray.open_zarr(path)`` gives a Dataset; arrays are chunked along
``prompt`` (or ``kv_prompt``) and compressed with Blosc-zstd. Floats use NaN and integers -1 where a prompt
has no value (positions past its length, demonstrations it does not have, offsets outside it).

Work in progress lives in a *parts* directory next to the store (outside Snakemake's declared output, so a
failed or killed job keeps it): each shard is written to a temporary name, flushed and atomically renamed,
then a ``.done`` marker holding its size and SHA-256 is written the same way. A shard counts as complete
only when its marker exists and matches the file, so a truncated or half-written shard is recomputed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from kicl.fileio import TEMP_TAG, atomic_directory, fsync_dir, sha256_file
from kicl.store.pooling import POOLINGS
from kicl.store.schema import DIMENSIONS, SCHEMA, Variable, forward_variables, layout

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
# re-exported for the capture (the definitions live in kicl.fileio, kicl.store.pooling and kicl.store.schema)
__all__ = ["POOLINGS", "ForwardStoreWriter", "ShardDir", "atomic_directory", "forward_variables", "layout"]


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
            self._durable_replace(manifest, json.dumps({"fingerprint": fingerprint}).encode())

    def _durable_replace(self, target: Path, write) -> None:
        """Write ``target`` through a flushed temporary file (``write(handle)`` or bytes) and one rename."""
        tmp = target.with_name(f"{target.name}{TEMP_TAG}{os.getpid()}")
        with open(tmp, "wb") as handle:
            if isinstance(write, bytes):
                handle.write(write)
            else:
                write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        fsync_dir(self.path)

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
        self._durable_replace(target, write)
        marker = {"bytes": target.stat().st_size, "sha256": sha256_file(target)}
        self._durable_replace(self._marker(name), json.dumps(marker).encode())

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


# Per-prompt arrays of rank >= 3 (attention, kernel weights, keys, values) get one chunk per prompt, so a
# reader of one prompt or a slice of prompts touches only those; small per-prompt tables share chunks.
_SMALL_CHUNK_PROMPTS = 1024


def _chunks(shape: tuple[int, ...]) -> tuple[int, ...]:
    lead = 1 if len(shape) >= 3 else _SMALL_CHUNK_PROMPTS
    return (max(1, min(lead, shape[0])), *(max(1, n) for n in shape[1:]))


class ForwardStoreWriter:
    """Creates a forward store with the schema's variables and coordinates, then takes prompt-range writes.

    ``variables`` must be declarations from ``kicl.store.schema`` (normally ``forward_variables(rotary,
    with_kv)``); ``sizes`` gives every dimension (``kicl.store.schema.layout`` builds sizes and coordinates).
    ``finalize`` refuses a store in which some rows of a variable were never written.
    """

    def __init__(
        self,
        path: str | Path,
        sizes: Mapping[str, int],
        coords: Mapping[str, np.ndarray],
        variables: Mapping[str, Variable],
        attrs: Mapping[str, object],
    ):
        for name, var in variables.items():
            if SCHEMA.get(name) != var:
                raise ValueError(f"forward store: variable {name!r} is not the one declared in kicl/store/schema.py")
            missing = [d for d in var.dims if d not in sizes]
            if missing:
                raise ValueError(f"forward store: no size given for dimension(s) {missing} of {name!r}")
        for name, values in coords.items():
            if name not in _COORDINATES:
                raise ValueError(f"forward store: {name!r} is not a dimension with a coordinate in the schema")
            if len(values) != sizes[name]:
                raise ValueError(f"forward store: coordinate {name!r} has {len(values)} values, size is {sizes[name]}")
        self.path = Path(path)
        self.group = zarr.open_group(store=str(self.path), mode="w", zarr_format=3)
        self.group.attrs.update(dict(attrs))
        self.arrays = {}
        self._written: dict[str, np.ndarray] = {}
        for name, values in coords.items():
            self.coordinate(name, values)
        for name, var in variables.items():
            shape = tuple(sizes[d] for d in var.dims)
            self._create(name, var.dims, var.dtype, var.fill, shape, _chunks(shape))
            self._written[name] = np.zeros(shape[0], dtype=bool)

    def _create(self, name, dims, dtype: str, fill, shape: tuple[int, ...], chunks: tuple[int, ...]) -> None:
        is_str = dtype == "str"
        self.arrays[name] = self.group.create_array(
            name,
            shape=shape,
            chunks=chunks,
            dtype=str if is_str else dtype,
            fill_value=fill,
            dimension_names=tuple(dims),
            compressors=None if is_str else BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle"),
        )

    def coordinate(self, name: str, values: np.ndarray) -> None:
        """Create the coordinate array ``name`` (dimension ``name``) holding ``values``, in the schema's dtype."""
        dtype = _COORDINATES[name]
        values = np.asarray(values, dtype=str if dtype == "str" else dtype)
        fill = "" if dtype == "str" else 0
        self._create(name, (name,), dtype, fill, (len(values),), (max(1, len(values)),))
        if len(values):
            self.arrays[name][:] = values

    def write(self, name: str, start: int, values: np.ndarray) -> None:
        """Write ``values`` into variable ``name`` at leading-dimension rows ``start .. start+len``."""
        array = self.arrays[name]
        if np.ndim(values) != array.ndim or any(n > m for n, m in zip(np.shape(values)[1:], array.shape[1:])):
            raise ValueError(f"forward store: {name!r} {array.shape} cannot take values of shape {np.shape(values)}")
        region = (slice(start, start + len(values)),) + tuple(slice(0, n) for n in np.shape(values)[1:])
        array[region] = values
        if name in self._written:
            self._written[name][start : start + len(values)] = True

    def finalize(self) -> None:
        """Check that every row of every variable was written; consolidate metadata (one request to open)."""
        unwritten = {name: int((~rows).sum()) for name, rows in self._written.items() if not rows.all()}
        if unwritten:
            detail = ", ".join(f"{name} ({n} rows)" for name, n in unwritten.items())
            raise ValueError(f"forward store {self.path}: never written: {detail}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            zarr.consolidate_metadata(str(self.path))


_COORDINATES = {d.name: d.coordinate for d in DIMENSIONS if d.coordinate is not None}
