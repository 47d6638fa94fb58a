"""Writing result files safely: a file or folder appears under its final name only once it is complete.

Also the one file checksum (``sha256_file``) used for shard markers, pinned wheels and joined model files.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: infix of the temporary siblings that ``atomic_directory`` creates (and removes when a killed run left them)
TEMP_TAG = ".tmp-"


def sha256_file(path: str | os.PathLike, block: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a directory entry (a rename inside it) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` (same suffix) to write to; rename it to ``path`` on success.

    On an exception the temporary file is removed and whatever was at ``path`` before is left untouched.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    temporary = final.with_name(f".tmp-{os.getpid()}-{final.name}")
    try:
        yield temporary
        os.replace(temporary, final)
    finally:
        temporary.unlink(missing_ok=True)


@contextmanager
def atomic_directory(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path of the folder ``target``; on success it replaces ``target`` in one rename.

    The yielded path does not exist yet: the caller creates it (``mkdir``, a Zarr store, ``save_pretrained``,
    ``os.replace`` of a ready folder). On an exception it is removed and ``target`` is left as it was.
    Temporaries left by a killed run are removed first. The body must create the folder; if it did not,
    ``FileNotFoundError`` names it.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f"{target.name}{TEMP_TAG}*"):  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)
    temporary = target.with_name(f"{target.name}{TEMP_TAG}{os.getpid()}")
    try:
        yield temporary
        if not temporary.is_dir():
            raise FileNotFoundError(f"{temporary}: nothing was written for {target}")
        if target.exists():
            shutil.rmtree(target)
        os.replace(temporary, target)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    fsync_dir(target.parent)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file."""
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def write_csv_atomic(frame, path: str | os.PathLike, **to_csv) -> Path:
    """Write a pandas DataFrame to ``path`` as CSV through a temporary file (``index=False`` unless given)."""
    to_csv.setdefault("index", False)
    with atomic_path(path) as temporary:
        frame.to_csv(temporary, **to_csv)
    return Path(path)
