"""capture.dtype auto: bfloat16 on a native-bfloat16 CPU only when the measured agreement check allows it."""

import json
import os

import numpy as np
import pytest
import torch
from helpers import make_model_folder, make_prompts

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import kicl.devices  # noqa: E402
from kicl.capture.dtype_check import compare_outputs  # noqa: E402
from kicl.capture.options import CaptureOptions  # noqa: E402
from kicl.capture.run import run_capture  # noqa: E402
from kicl.devices import AUTO_BF16, cpu_has_native_bf16, resolve_dtype  # noqa: E402
from kicl.store.reader import open_store  # noqa: E402

CAPTURE = {"batch_size": 3, "shard_size": 4, "kv_prompts": 0, "dtype_check_prompts": 6}
LOOSE = {"dtype_check_min_agreement": 0.0, "dtype_check_max_kernel_diff": 1e9}
IMPOSSIBLE = {"dtype_check_min_agreement": 1.0, "dtype_check_max_kernel_diff": 0.0}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("dtype")
    manifest = make_model_folder(root / "model", "llama", seed=7)
    meta, prompts = make_prompts(root / "prompts", manifest["path"], n_prompts=8, demos=(2, 4))
    return {"root": root, "manifest": manifest, "meta": meta, "prompts": prompts}


@pytest.fixture
def native_bf16(monkeypatch):
    """Pretend the CPU has native bfloat16 (bfloat16 runs on any CPU, only slower), so the check runs anywhere."""
    monkeypatch.setattr(kicl.devices, "cpu_has_native_bf16", lambda: True)


def test_resolve_dtype_rules(tmp_path):
    assert resolve_dtype("auto", "float32", "cpu", native_bf16=True) == AUTO_BF16
    assert resolve_dtype("auto", None, "cpu", native_bf16=True) == AUTO_BF16
    assert resolve_dtype("auto", "float32", "cpu", native_bf16=False) == "float32"
    assert resolve_dtype("auto", "float32", "cuda:0", native_bf16=True) == "float32"  # CUDA keeps the catalog dtype
    assert resolve_dtype("auto", "float16", "cpu", native_bf16=True) == "float16"
    assert resolve_dtype("auto", "float32", native_bf16=True) == "float32"  # resource estimates: no device
    for explicit in ("float32", "bfloat16", "float16"):
        assert resolve_dtype(explicit, "float32", "cpu", native_bf16=True) == explicit
    plain = tmp_path / "cpuinfo"
    plain.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n")
    assert not cpu_has_native_bf16(str(plain))
    assert not cpu_has_native_bf16(str(tmp_path / "missing"))
    native = tmp_path / "cpuinfo-bf16"
    native.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_tile\n")
    assert cpu_has_native_bf16(str(native)) == torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def test_options_keep_explicit_dtypes(toy, native_bf16):
    assert CaptureOptions.from_config({"dtype": "auto"}, toy["manifest"]).dtype == AUTO_BF16
    for explicit in ("float32", "bfloat16", "float16"):
        assert CaptureOptions.from_config({"dtype": explicit}, toy["manifest"]).dtype == explicit
    assert CaptureOptions.from_config({"dtype": "auto", "device": "cuda"}, toy["manifest"]).dtype == "float32"


def test_compare_outputs_counts_flips_and_kernel_moves():
    reference = {
        "label_logits": np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [0.0, 0.5]], np.float32),
        "kernel_weight": np.zeros((4, 4, 2, 3, 5), np.float32),
    }
    candidate = {key: value.copy() for key, value in reference.items()}
    candidate["label_logits"][1] = [1.5, 1.0]  # ŷ flips
    candidate["kernel_weight"][2, 0, 1, 2, 3] = 0.25  # max pooling moves
    candidate["kernel_weight"][3, 2, 0, 0, 0] = 9.0  # sum pooling is not compared
    candidate["kernel_weight"][:, 0, :, :, 4] = np.nan  # absent demonstrations
    reference["kernel_weight"][:, 0, :, :, 4] = np.nan
    numbers = compare_outputs(reference, candidate)
    assert numbers["prompts"] == 4 and numbers["prediction_agreement"] == 0.75
    assert numbers["max_kernel_diff"] == 0.25 and numbers["max_label_logit_diff"] == 1.5
    assert numbers["mean_kernel_diff"] == pytest.approx(0.25 / (4 * 2 * 3 * 4))


def test_check_picks_bf16_when_loose_and_float32_when_impossible(toy, tmp_path, native_bf16, caplog):
    caplog.set_level("INFO", logger="kicl.capture.dtype_check")
    args = (toy["meta"], toy["prompts"], toy["manifest"])
    loose = open_store(run_capture(*args, tmp_path / "loose.zarr", {**CAPTURE, **LOOSE}))
    strict = open_store(run_capture(*args, tmp_path / "strict.zarr", {**CAPTURE, **IMPOSSIBLE}))
    bf16 = open_store(run_capture(*args, tmp_path / "bf16.zarr", {**CAPTURE, "dtype": "bfloat16"}))
    fp32 = open_store(run_capture(*args, tmp_path / "fp32.zarr", {**CAPTURE, "dtype": "float32"}))

    check = loose.attrs["dtype_check"]
    assert check["chosen"] == "bfloat16" and loose.attrs["capture"]["dtype"] == "bfloat16"
    assert check["prompts"] == 6 and check["requested"] == "auto"
    assert check["max_kernel_diff"] > 0 and 0 <= check["mean_kernel_diff"] <= check["max_kernel_diff"]
    assert 0 <= check["prediction_agreement"] <= 1 and check["max_label_logit_diff"] > 0
    assert strict.attrs["dtype_check"]["chosen"] == "float32" and strict.attrs["capture"]["dtype"] == "float32"
    assert strict.attrs["dtype_check"]["max_kernel_diff"] == check["max_kernel_diff"]  # the same measurement
    messages = [r.getMessage() for r in caplog.records if "capture.dtype auto" in r.getMessage()]
    assert len(messages) == 2 and messages[0].endswith("bfloat16") and messages[1].endswith("float32")
    # the chosen dtype gives exactly the store of that dtype named explicitly; explicit dtypes run no check
    np.testing.assert_array_equal(loose.label_logits.values, bf16.label_logits.values)
    np.testing.assert_array_equal(loose.kernel_weight.values, bf16.kernel_weight.values)
    np.testing.assert_array_equal(strict.label_logits.values, fp32.label_logits.values)
    assert bf16.attrs["dtype_check"] is None and fp32.attrs["dtype_check"] is None
    assert bf16.attrs["capture"]["dtype"] == "bfloat16" and fp32.attrs["capture"]["dtype"] == "float32"
    # the check's numbers are those of the first prompts of the two explicit stores
    first = slice(0, 6)
    agree = (bf16.prediction.values[first] == fp32.prediction.values[first]).mean()
    assert check["prediction_agreement"] == pytest.approx(agree)
    pooled = np.abs(bf16.kernel_weight.values[first, 0] - fp32.kernel_weight.values[first, 0].astype(np.float64))
    assert check["max_kernel_diff"] == pytest.approx(np.nanmax(pooled), rel=1e-6)
    assert json.loads(json.dumps(check)) == check, "the record is plain JSON"
