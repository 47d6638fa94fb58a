"""A folder of computed rows keyed by content, shared by concurrent jobs: each row is computed once.

Used for the next-token distributions P(o|x) of the capture (:mod:`kicl.capture.simpred_cache`) and for
sentence embeddings (:mod:`kicl.data.encoders`). The folder is not a Snakemake output, so a job that adds rows
makes no other job rerun. Rows are appended in shards with unique names: ``part-<pid>-<random>.npy`` (the rows,
float32), then ``part-....json`` with their keys, byte size and SHA-256, each written to a temporary name,
flushed and renamed, the index last. A shard counts only when its index exists and its array matches the
recorded size and hash, so a half-written or truncated shard is ignored (its rows are computed again). Two jobs
that compute the same row at the same time both write it (duplicate work, no corruption); a reader takes the
first valid copy. ``key.json`` spells out what the folder's rows depend on.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from kicl.fileio import TEMP_TAG, fsync_dir, sha256_file

log = logging.getLogger(__name__)

STALE_TEMP_SECONDS = 24 * 3600  # temporaries older than this were left by a killed job


class RowCache:
    """Rows (1-D float32 arrays of one length) under string keys in ``path``; ``fields`` (JSON-able) are written
    to ``key.json`` when the folder is new."""

    def __init__(self, path, fields: dict | None = None, what: str = "rows"):
        self.path = Path(path)
        self.what = what
        self.path.mkdir(parents=True, exist_ok=True)
        key_file = self.path / "key.json"
        if fields is not None and not key_file.exists():
            self._durable_write(key_file, json.dumps(fields, indent=1, sort_keys=True, default=str).encode())
        self._remove_stale_temporaries()
        self._candidates: dict[str, list[tuple[str, int]]] = {}
        self._shards: dict[str, np.ndarray | None] = {}  # shard name -> memory map (None: invalid)
        self._seen: set[str] = set()
        self.refresh()

    def _durable_write(self, target: Path, data: bytes | np.ndarray) -> None:
        tmp = target.with_name(f"{target.name}{TEMP_TAG}{os.getpid()}-{secrets.token_hex(4)}")
        try:
            with open(tmp, "wb") as handle:
                if isinstance(data, np.ndarray):
                    np.save(handle, data)
                else:
                    handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(self.path)

    def _remove_stale_temporaries(self) -> None:
        now = time.time()
        for stale in self.path.glob(f"*{TEMP_TAG}*"):
            try:
                if now - stale.stat().st_mtime > STALE_TEMP_SECONDS:
                    stale.unlink()
            except FileNotFoundError:
                pass  # another job removed it

    def refresh(self) -> None:
        """Read the indexes of shards written since the last look (by this or any other job)."""
        for index in sorted(self.path.glob("part-*.json")):
            if TEMP_TAG in index.name or index.name in self._seen:
                continue
            self._seen.add(index.name)
            try:
                keys = list(json.loads(index.read_text())["keys"])
            except (OSError, ValueError, KeyError, TypeError):
                log.warning("%s cache: ignoring the unreadable index %s", self.what, index)
                continue
            name = index.with_suffix(".npy").name
            for row, key in enumerate(keys):
                self._candidates.setdefault(key, []).append((name, row))

    def _shard(self, name: str) -> np.ndarray | None:
        """The memory-mapped rows of a shard, or None when it does not match its index (then it is ignored)."""
        if name not in self._shards:
            array_path = self.path / name
            try:
                record = json.loads(array_path.with_suffix(".json").read_text())
                valid = array_path.stat().st_size == record["bytes"] and sha256_file(array_path) == record["sha256"]
                rows = np.load(array_path, mmap_mode="r") if valid else None
                if rows is not None and (rows.ndim != 2 or len(rows) != len(record["keys"])):
                    rows = None
            except (OSError, ValueError, KeyError, TypeError):
                rows = None
            if rows is None:
                log.warning("%s cache: %s does not match its index; ignoring it", self.what, array_path)
            self._shards[name] = rows
        return self._shards[name]

    def lookup(self, key: str) -> np.ndarray | None:
        """The row of ``key`` (memory-mapped), or None when no valid shard holds it."""
        for name, row in self._candidates.get(key, ()):
            rows = self._shard(name)
            if rows is not None:
                return rows[row]
        return None

    def missing(self, keys: Sequence[str]) -> list[str]:
        """The unique keys without a valid row, in first-seen order."""
        return [key for key in dict.fromkeys(keys) if self.lookup(key) is None]

    def add(self, keys: Sequence[str], rows: np.ndarray) -> None:
        """Append one shard with ``rows`` (len(keys), n) under ``keys``."""
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        if rows.ndim != 2 or len(rows) != len(keys):
            raise ValueError(f"{len(keys)} keys for rows of shape {rows.shape}")
        name = f"part-{os.getpid()}-{secrets.token_hex(8)}"
        array_path = self.path / f"{name}.npy"
        self._durable_write(array_path, rows)
        record = {"keys": list(keys), "bytes": array_path.stat().st_size, "sha256": sha256_file(array_path)}
        self._durable_write(self.path / f"{name}.json", json.dumps(record).encode())
        self.refresh()

    def rows(self, keys: Sequence[str]) -> np.ndarray:
        """The rows of ``keys`` (len(keys), n) float32; KeyError naming the first key without one."""
        out = []
        for key in keys:
            found = self.lookup(key)
            if found is None:
                raise KeyError(f"{self.what} cache {self.path}: no row for key {key}")
            out.append(np.asarray(found))
        return np.stack(out) if out else np.empty((0, 0), np.float32)

    def get(self, keys: Sequence[str], compute: Callable[[list[str]], np.ndarray], chunk: int = 4096) -> np.ndarray:
        """The rows of ``keys``; the missing ones are computed by ``compute(missing keys)`` in chunks and added
        first. Logs how many were reused."""
        self.refresh()
        todo = self.missing(keys)
        unique = len(dict.fromkeys(keys))
        log.info("%s cache %s: %d of %d unique rows reused, %d computed", self.what, self.path.name,
                 unique - len(todo), unique, len(todo))  # fmt: skip
        for start in range(0, len(todo), chunk):
            part = todo[start : start + chunk]
            self.add(part, compute(part))
        return self.rows(keys)

    def close(self) -> None:
        """Drop the memory maps (e.g. before the folder is removed)."""
        self._shards.clear()
