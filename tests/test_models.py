"""Pinned wheels (sha256, member-only extraction, multi-part joins), packaged GGUF conversion, model and
encoder manifests, and the clear message when a Hub model is neither cached nor reachable."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import default_config

from kicl.data.assets import AssetError, download_wheel, extract_members, fetch_packaged, join_packaged_parts
from kicl.data.models import load_model, load_tokenizer, write_model_manifest
from kicl.fileio import sha256_file as sha256_of

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def make_wheel(folder: Path, name: str, version: str, files: dict[str, bytes]) -> Path:
    """A minimal valid wheel (dist-info + files) for a local pip wheelhouse."""
    module = name.replace("-", "_")
    wheel = folder / f"{module}-{version}-py3-none-any.whl"
    info = f"{module}-{version}.dist-info"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
        archive.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        archive.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: kicl-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        archive.writestr(f"{info}/RECORD", "")
    return wheel


@pytest.fixture
def wheelhouse(tmp_path, monkeypatch):
    """A local package index: pip download resolves from tmp_path/wheelhouse only."""
    house = tmp_path / "wheelhouse"
    house.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(house))
    monkeypatch.delenv("KICL_WHEEL_CACHE", raising=False)
    return house


def test_fetch_extracts_only_the_member_after_checking_sha256(wheelhouse, tmp_path):
    wheel = make_wheel(
        wheelhouse,
        "kicl-probe-data",
        "0.1",
        {
            "kicl_probe_data/a.txt": b"A",
            "kicl_probe_data/sub/b.txt": b"B",
            "kicl_probe_data/__init__.py": b"raise SystemExit",
        },
    )
    files = fetch_packaged("kicl-probe-data", "0.1", sha256_of(wheel), ["kicl_probe_data/sub/b.txt"], tmp_path / "out")
    assert [p.relative_to(tmp_path / "out").as_posix() for p in files] == ["kicl_probe_data/sub/b.txt"]
    assert sorted(p.name for p in (tmp_path / "out").rglob("*") if p.is_file()) == ["b.txt"]
    files = fetch_packaged("kicl-probe-data", "0.1", sha256_of(wheel), ["kicl_probe_data/"], tmp_path / "dir")
    assert sorted(p.name for p in files) == ["__init__.py", "a.txt", "b.txt"]
    with pytest.raises(AssetError, match="member 'kicl_probe_data/missing.txt' is not in kicl_probe_data-0.1"):
        fetch_packaged("kicl-probe-data", "0.1", sha256_of(wheel), ["kicl_probe_data/missing.txt"], tmp_path / "no")
    assert not (tmp_path / "no").exists()


def test_tampered_sha256_fails_cleanly_and_keeps_the_cache(wheelhouse, tmp_path):
    wheel = make_wheel(wheelhouse, "kicl-probe-data", "0.2", {"kicl_probe_data/a.txt": b"A"})
    good = sha256_of(wheel)
    cache = tmp_path / "cache"
    download_wheel("kicl-probe-data", "0.2", good, tmp_path / "first", cache_dir=cache)
    assert (cache / good / wheel.name).exists()
    tampered = good[:-1] + ("0" if good[-1] != "0" else "1")
    with pytest.raises(
        AssetError, match=rf"sha256 mismatch for the wheel kicl-probe-data==0.2 .*expected {tampered}, got {good}"
    ):
        fetch_packaged("kicl-probe-data", "0.2", tampered, ["kicl_probe_data/a.txt"], tmp_path / "out", cache_dir=cache)
    assert not (tmp_path / "out").exists()
    assert (cache / good / wheel.name).exists() and not (cache / tampered).exists()
    with pytest.raises(AssetError, match="could not download the wheel kicl-probe-data==9.9"):
        download_wheel("kicl-probe-data", "9.9", good, tmp_path / "missing")


def test_parts_are_joined_in_order(wheelhouse, tmp_path):
    payload = bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8))
    chunks = [payload[:1000], payload[1000:2500], payload[2500:]]
    parts = []
    for index, chunk in enumerate(chunks, 1):
        wheel = make_wheel(
            wheelhouse, f"kicl-probe-part{index}", "1.0", {f"kicl_probe_part{index}/data/part0{index}.bin": chunk}
        )
        parts.append(
            {
                "package": f"kicl-probe-part{index}",
                "version": "1.0",
                "sha256": sha256_of(wheel),
                "member": f"kicl_probe_part{index}/data/part0{index}.bin",
            }
        )
    joined = join_packaged_parts(parts, tmp_path / "model.gguf")
    assert joined.read_bytes() == payload
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf", "wheelhouse"]


def test_extract_refuses_unsafe_member_names(tmp_path):
    wheel = tmp_path / "evil-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("../escape.txt", b"x")
    with pytest.raises(AssetError, match="unsafe archive member"):
        extract_members(wheel, ["../escape.txt"], tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()


@pytest.mark.slow
def test_packaged_smollm2_is_a_plain_hf_folder_that_predicts_sensibly(smollm2_dir, tmp_path):
    provenance = json.loads((smollm2_dir / "kicl_source.json").read_text())
    assert provenance["architecture"] == "LlamaForCausalLM" and provenance["n_parameters"] == 134_515_008
    assert provenance["parts"] == default_config()["models"]["smollm2-135m"]["packaged_gguf"]["parts"]
    assert (smollm2_dir / "model.safetensors").exists() and not list(smollm2_dir.glob("*.gguf"))
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert "quantization_config" not in config and config["num_hidden_layers"] == 30
    manifest = write_model_manifest(
        "smollm2-135m", {"source": "local", "local": {"path": str(smollm2_dir)}}, tmp_path / "smollm2.json"
    )
    assert manifest["max_length"] == 8192 and manifest["architecture"] == "LlamaForCausalLM"
    tokenizer = load_tokenizer(tmp_path / "smollm2.json")
    model = load_model(tmp_path / "smollm2.json")
    ids = tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(ids).logits[0, -1]
    paris, london = (tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in (" Paris", " London"))
    assert logits[paris] > logits[london] + 2


def test_local_model_folder_needs_safetensors_and_loads(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=64, n_positions=32, n_embd=16, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config)
    model.save_pretrained(tmp_path / "tiny", safe_serialization=True)
    manifest = write_model_manifest(
        "tiny",
        {"source": "local", "local": {"path": str(tmp_path / "tiny")}, "dtype": "float32", "device": "cpu"},
        tmp_path / "tiny.json",
    )
    assert manifest["max_length"] == 32 and manifest["model_type"] == "gpt2"
    loaded = load_model(manifest)
    assert torch.equal(loaded.transformer.wte.weight, model.transformer.wte.weight)
    (tmp_path / "tiny" / "model.safetensors").rename(tmp_path / "tiny" / "pytorch_model.bin")
    with pytest.raises(AssetError, match=r"model 'tiny': .* has no \*\.safetensors weights"):
        write_model_manifest(
            "tiny", {"source": "local", "local": {"path": str(tmp_path / "tiny")}}, tmp_path / "x.json"
        )
    assert not (tmp_path / "x.json").exists()


def test_uncached_hub_model_offline_says_how_to_provide_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    spec = default_config()["models"]["gpt-j-6b"]
    with pytest.raises(AssetError) as error:
        write_model_manifest("gpt-j-6b", spec, tmp_path / "gpt-j-6b.json")
    message = str(error.value)
    assert "model 'gpt-j-6b'" in message and "'EleutherAI/gpt-j-6b'" in message and str(tmp_path / "hub") in message
    assert "hf download EleutherAI/gpt-j-6b --revision main" in message and "HF_HOME" in message
    assert "models.gpt-j-6b.source: local" in message
    assert not (tmp_path / "gpt-j-6b.json").exists()


@pytest.mark.slow
def test_packaged_minilm_encoder_embeds_sensibly(minilm_dir, tmp_path):
    from kicl.data.encoders import load_encoder, write_encoder_manifest

    manifest = write_encoder_manifest(
        "minilm", {"source": "local", "local": {"path": str(minilm_dir)}}, tmp_path / "e.json"
    )
    encoder = load_encoder(manifest)
    vectors = encoder.encode(["wonderful", "delightful", "the stock market"], normalize_embeddings=True)
    assert vectors.shape == (3, 384)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.3
