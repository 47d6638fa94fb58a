"""The forward-pass capture against transformers' eager attention (output_attentions=True) and past_key_values."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import eager_reference, make_model_folder, make_prompts, make_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from kicl.capture.adapters import attention_modules, prerope_key_module  # noqa: E402
from kicl.capture.run import (  # noqa: E402
    CaptureOptions,
    forward_batch,
    kernel_weights,
    kv_positions,
    prepare_model,
    register_capture_attention,
)
from kicl.config import ConfigError  # noqa: E402

FAMILIES = ["gptj", "llama", "gpt2", "qwen2", "mistral", "gemma3"]
TOL = 1e-5


@pytest.fixture(scope="module")
def prompt_records(tmp_path_factory):
    tokenizer_dir = tmp_path_factory.mktemp("tokenizer")
    make_tokenizer(tokenizer_dir)
    _, path = make_prompts(tmp_path_factory.mktemp("prompts"), tokenizer_dir, n_prompts=7, demos=(1, 4), words=(2, 9))
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module", params=FAMILIES)
def family_model(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    make_model_folder(folder, request.param, seed=FAMILIES.index(request.param))
    return request.param, str(folder)


def _capture_model(folder):
    from transformers import AutoModelForCausalLM

    register_capture_attention()
    model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="sdpa", dtype=torch.float32).eval()
    return model, prepare_model(model)


def _prerope_reference(eager_model, sequence, head_dim):
    """Pre-rotary keys of the eager model, hooked at the key norm where there is one, else the key projection.

    Returns (layers, n_kv, T, d); the key norm's output is (1, n_kv, T, d) in Gemma-3 and (1, T, n_kv, d) in Qwen3.
    """
    captured, handles = [], []
    length = len(sequence)

    def keep(_module, _inputs, output):
        if output.dim() == 4 and output.shape[2] == length:  # (1, n_kv, T, d)
            captured.append(output[0])
        else:  # (1, T, n_kv * d) or (1, T, n_kv, d)
            captured.append(output[0].reshape(length, -1, head_dim).transpose(0, 1))

    for attention in attention_modules(eager_model):
        module = getattr(attention, "k_norm", None) or prerope_key_module(attention)[0]
        handles.append(module.register_forward_hook(keep))
    with torch.inference_mode():
        eager_model(torch.tensor([sequence]))
    for handle in handles:
        handle.remove()
    return np.stack([c.numpy() for c in captured])


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_last_row_and_logits_match_eager(family_model, prompt_records, padding_side):
    family, folder = family_model
    sequences = [p["input_ids"] for p in prompt_records]
    assert len({len(s) for s in sequences}) > 1, "the batch must need padding"
    _, reference = eager_reference(folder, sequences)
    model, shape = _capture_model(folder)
    result = forward_batch(model, sequences, padding_side=padding_side, n_layers=shape.n_layers)
    for row, ref, sequence in zip(result.rows, reference, sequences):
        assert row.shape == (shape.n_layers, shape.n_heads, len(sequence))
        assert np.abs(row - ref["rows"]).max() <= TOL
        np.testing.assert_allclose(row.sum(-1), 1.0, atol=1e-5)
    # the random models are not uniform: the comparison has something to compare
    assert max(ref["rows"].max() for ref in reference) > 0.5
    np.testing.assert_allclose(result.logits.numpy(), np.stack([r["logits"] for r in reference]), atol=1e-4)


def test_keys_values_match_cache_and_hooks(family_model, prompt_records):
    family, folder = family_model
    sequences = [p["input_ids"] for p in prompt_records[:4]]
    eager, reference = eager_reference(folder, sequences)
    model, shape = _capture_model(folder)
    assert shape.rotary == (family != "gpt2")
    offsets = [-1, 0, 1, 2, 3]
    n_demos = 4
    kv_rows = [0, 2, 3]
    positions, valid = zip(*[
        kv_positions([d["label_pos"] for d in prompt_records[r]["demos"]], offsets, len(sequences[r]), n_demos)
        for r in kv_rows
    ])  # fmt: skip
    for side in ("right", "left"):
        result = forward_batch(
            model,
            sequences,
            padding_side=side,
            kv_rows=kv_rows,
            kv_positions=np.array(positions),
            n_layers=shape.n_layers,
        )
        for k, r in enumerate(kv_rows):
            pos = positions[k]
            assert np.abs(result.keys[k] - reference[r]["keys"][:, :, pos, :]).max() <= TOL
            assert np.abs(result.values[k] - reference[r]["values"][:, :, pos, :]).max() <= TOL
            if shape.rotary:
                prerope = _prerope_reference(eager, sequences[r], shape.head_dim)
                assert np.abs(result.keys_prerope[k] - prerope[:, :, pos, :]).max() <= TOL
                # rotary changes the keys (except at position 0), so the two are different arrays
                assert np.abs(result.keys_prerope[k] - result.keys[k]).max() > 1e-3
            else:
                assert result.keys_prerope is None


def test_kv_positions_marks_outside_and_missing():
    positions, valid = kv_positions([3, 9], [-1, 0, 1, 2], length=11, n_demos=3)
    assert positions.tolist() == [2, 3, 4, 5, 8, 9, 10, 10, 0, 0, 0, 0]
    assert valid.tolist() == [[True] * 4, [True, True, True, False], [False] * 4]


def test_kernel_weights_direct():
    rng = np.random.default_rng(0)
    attention = rng.random((2, 3, 30)).astype(np.float32)
    starts, labels = np.array([1, 8, 20, -1]), np.array([5, 12, 27, -1])
    weights = kernel_weights(attention, starts, labels)
    for d in range(3):
        inside = (np.arange(30) >= starts[d]) & (np.arange(30) <= labels[d])
        np.testing.assert_array_equal(weights[0, :, :, d], np.where(inside, attention, -np.inf).max(-1))
        np.testing.assert_allclose(weights[2, :, :, d], (attention * inside).sum(-1), rtol=1e-6)
        np.testing.assert_allclose(weights[1, :, :, d], (attention * inside).sum(-1) / inside.sum(), rtol=1e-6)
        np.testing.assert_array_equal(weights[3, :, :, d], attention[:, :, labels[d]])
    assert np.isnan(weights[:, :, :, 3]).all()


def test_unsupported_options_are_named():
    with pytest.raises(ConfigError, match="config key capture.simpred_context"):
        CaptureOptions.from_config({"simpred_context": "chat"})
    with pytest.raises(ConfigError, match="config key capture.padding_side"):
        CaptureOptions.from_config({"padding_side": "middle"})
    with pytest.raises(ConfigError, match="config key capture.dtype_check_min_agreement"):
        CaptureOptions.from_config({"dtype_check_min_agreement": 1.5})
    with pytest.raises(ConfigError, match="config key capture.dtype_check_prompts"):
        CaptureOptions.from_config({"dtype_check_prompts": 0})
    options = CaptureOptions.from_config({"dtype": "auto", "device": "auto"}, {"dtype": "bfloat16", "device": "cpu"})
    assert (options.dtype, options.device) == ("bfloat16", "cpu")


def _smollm2_dir(request):
    try:
        return request.getfixturevalue("smollm2_dir")
    except pytest.FixtureLookupError:
        pytest.skip("no `smollm2_dir` fixture in tests/conftest.py (the models stage provides the converted SmolLM2)")


@pytest.mark.slow
@pytest.mark.assets  # finds smollm2_dir at run time, so conftest cannot mark it
def test_real_smollm2_matches_eager(request):
    folder = str(_smollm2_dir(request))
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    texts = [
        "Review: a charming and often affecting journey.\nSentiment: positive\nReview: dull and lifeless.\nSentiment:",
        "Review: unflinchingly bleak and desperate.\nSentiment:",
        "The capital of France is",
    ]
    sequences = [tokenizer(t)["input_ids"] for t in texts]
    eager, reference = eager_reference(folder, sequences)
    model, shape = _capture_model(folder)
    assert (shape.n_layers, shape.n_heads, shape.n_kv_heads) == (30, 9, 3)
    label_pos = [len(sequences[0]) - 8]
    positions, _ = kv_positions(label_pos, [-1, 0, 1, 2, 3], len(sequences[0]), 1)
    result = forward_batch(model, sequences, kv_rows=[0], kv_positions=positions[None], n_layers=shape.n_layers)
    for row, ref in zip(result.rows, reference):
        assert np.abs(row - ref["rows"]).max() <= TOL
    assert np.abs(result.keys[0] - reference[0]["keys"][:, :, positions, :]).max() <= 1e-4
    assert np.abs(result.values[0] - reference[0]["values"][:, :, positions, :]).max() <= 1e-4
    np.testing.assert_allclose(result.logits.numpy(), np.stack([r["logits"] for r in reference]), atol=1e-3)


def test_token_budget_batches_cover_every_input_once():
    from kicl.capture.simpred import token_budget_batches

    lengths = [5, 30, 12, 12, 7, 30, 3, 9]
    batches = token_budget_batches(lengths, budget=40)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) * max(lengths[i] for i in batch) <= 40 or len(batch) == 1
        assert lengths[batch[0]] == max(lengths[i] for i in batch)
    assert batches[0] == [1] and batches[-1][-1] == 6


def test_half_precision_rows_stay_close_and_sum_to_one(family_model, prompt_records):
    """bfloat16 weights (capture.dtype): the rows are still computed in float32 from the layer's q and k."""
    from transformers import AutoModelForCausalLM

    family, folder = family_model
    sequences = [p["input_ids"] for p in prompt_records[:3]]
    _, reference = eager_reference(folder, sequences)
    register_capture_attention()
    model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="sdpa", dtype=torch.bfloat16).eval()
    shape = prepare_model(model)
    result = forward_batch(model, sequences, n_layers=shape.n_layers)
    for row, ref in zip(result.rows, reference):
        assert row.dtype == np.float32
        np.testing.assert_allclose(row.sum(-1), 1.0, atol=1e-5)
        assert np.abs(row - ref["rows"]).max() < 0.1


def test_options_defaults_come_from_the_schema():
    import yaml

    from kicl.config import SCHEMA_PATH, defaults_for
    from kicl.devices import resolve_device, resolve_dtype

    schema = yaml.safe_load(Path(SCHEMA_PATH).read_text())["properties"]["capture"]["properties"]
    options = CaptureOptions.from_config({}, {"dtype": "float32", "device": "cpu"})
    for key in ("batch_size", "shard_size", "kv_prompts", "padding_side", "simpred_context", "dtype_check_prompts"):
        assert getattr(options, key) == schema[key]["default"] == defaults_for("capture")[key]
    assert options.kv_offsets == tuple(schema["kv_offsets"]["default"])
    assert resolve_device("auto", "cuda:1") == "cuda:1" and resolve_device("cpu", "cuda") == "cpu"
    assert resolve_device("auto", None, fallback="mps") == "mps" and resolve_device("auto", "auto") == "cpu"
    assert resolve_dtype("auto", "float16") == "float16" and resolve_dtype("auto", "auto") == "float32"
    with pytest.raises(KeyError, match="nope"):
        defaults_for("nope")


def test_prediction_ties_go_to_the_lowest_label():
    from kicl.capture.run import predict

    logits = np.array([[1.0, 1.0, 0.5], [0.0, 2.0, 2.0], [3.0, 1.0, 3.0]], np.float16)
    assert predict(logits).tolist() == [0, 1, 0]


def test_contextual_calibration_logits_are_the_content_free_prompt(tmp_path):
    """capture.calibration: label_logits_cf equal the logits of the prompt rebuilt with the content-free text as its
    test input (same demonstrations), and the calibrated ŷ follows log p − log p_cf."""
    from helpers import CONTENT, TEMPLATE, VERBALIZERS
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kicl.analysis.conditions import calibrated_prediction
    from kicl.capture.run import run_capture
    from kicl.prompts.build import Demo, PieceTokenizer, build_prompt
    from kicl.store.reader import open_store

    manifest = make_model_folder(tmp_path / "model", "llama", seed=3)
    meta, prompts = make_prompts(tmp_path / "prompts", tmp_path / "model", n_prompts=5)
    capture = {"dtype": "float32", "kv_prompts": 0, "calibration": True, "content_free": CONTENT[0]}
    ds = open_store(run_capture(meta, prompts, manifest, tmp_path / "store.zarr", capture), needs="all")
    assert "label_logits_cf" in ds and ds.attrs["capture"]["calibration"] is True

    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "model")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "model", dtype=torch.float32).eval()
    pieces = PieceTokenizer(tokenizer, "test")
    label_ids = json.loads(meta.read_text())["label_token_ids"]
    for row, record in enumerate(json.loads(line) for line in prompts.read_text().splitlines()):
        demos = [Demo(d["pool_index"], d["label"], d["text"]) for d in record["demos"]]
        content_free = build_prompt(pieces, TEMPLATE, VERBALIZERS, demos, CONTENT[0])["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([content_free])).logits[0, -1, label_ids].numpy()
        np.testing.assert_allclose(ds["label_logits_cf"].values[row], logits, atol=1e-4)
    # without calibration the store has no content-free logits
    plain = open_store(run_capture(meta, prompts, manifest, tmp_path / "plain.zarr", {"dtype": "float32"}), needs="all")
    assert "label_logits_cf" not in plain

    logits = np.log(np.array([[0.6, 0.4], [0.6, 0.4], [0.2, 0.8]]))
    content_free = np.log(np.array([[0.7, 0.3], [0.5, 0.5], [0.1, 0.9]]))
    np.testing.assert_array_equal(calibrated_prediction(logits, content_free), [1, 0, 0])


def test_job_threads_do_not_reach_the_numbers(tmp_path, monkeypatch):
    """The job's core count (the rule's threads) must not reach the numbers: whatever ``threads`` the job
    passes, every shard is computed at capture.intra_op_threads (default 1) and the stores are identical.
    (On this repo's 2-core AMD test machine 1 and 2 threads give bit-identical bfloat16 numbers, see
    benchmarks/noise_floor.py, so the thread count seen inside the computation is what is asserted.)"""
    import kicl.capture.run as run
    from kicl.store.reader import open_store

    manifest = make_model_folder(tmp_path / "model", "llama", seed=2)
    meta, prompts = make_prompts(tmp_path / "prompts", tmp_path / "model", n_prompts=4)
    seen, original = [], run.prompt_shard

    def recording(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return original(*args, **kwargs)

    monkeypatch.setattr(run, "prompt_shard", recording)
    before = torch.get_num_threads()
    stores = {}
    try:
        for threads in (1, 2):
            capture = {"dtype": "bfloat16", "kv_prompts": 2}
            path = run.run_capture(
                meta, prompts, manifest, tmp_path / f"t{threads}.zarr", capture, run.CaptureJob(threads=threads)
            )
            stores[threads] = open_store(path, needs="all")
        assert set(seen) == {1}, f"the capture computed at {sorted(set(seen))} threads"
        seen.clear()
        capture = {"dtype": "bfloat16", "kv_prompts": 0, "intra_op_threads": 0}  # 0: the job's threads, as before
        run.run_capture(meta, prompts, manifest, tmp_path / "job.zarr", capture, run.CaptureJob(threads=2))
        assert set(seen) == {2}
    finally:
        torch.set_num_threads(before)
    for name in stores[1].data_vars:
        np.testing.assert_array_equal(stores[1][name].values, stores[2][name].values, err_msg=name)
    with pytest.raises(ConfigError, match="config key capture.intra_op_threads"):
        CaptureOptions.from_config({"intra_op_threads": -1})
