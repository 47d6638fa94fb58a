"""The forward store: contents against eager references, layout, the shard directory and kill-and-resume."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import zarr

from forward_fixtures import eager_reference, make_model_folder, make_prompts

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from kicl.capture.run import run_capture  # noqa: E402
from kicl.store.reader import open_store  # noqa: E402
from kicl.store.writer import ShardDir  # noqa: E402

CAPTURE = {"batch_size": 3, "shard_size": 4, "kv_prompts": 5, "kv_offsets": [-1, 0, 1, 2, 3]}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    manifest = make_model_folder(root / "model", "llama", seed=3)
    meta, prompts = make_prompts(root / "prompts", manifest["path"], n_prompts=10, demos=(1, 4))
    store = root / "forward" / "toy.zarr"
    run_capture(meta, prompts, manifest, store, CAPTURE, config_attrs={"capture": CAPTURE})
    records = [json.loads(line) for line in prompts.read_text().splitlines()]
    return {"root": root, "manifest": manifest, "meta": meta, "prompts": prompts, "store": store, "records": records}


def test_store_matches_eager_and_contract(toy):
    ds = open_store(toy["store"], needs="all")
    records = toy["records"]
    meta = json.loads(toy["meta"].read_text())
    assert not (toy["store"].parent / "toy.parts").exists(), "the parts directory is removed after success"
    assert ds.attention.dims == ("prompt", "layer", "head", "position")
    assert ds.kernel_weight.dims == ("prompt", "pooling", "layer", "head", "demo")
    assert list(ds.pooling.values) == ["max", "mean", "sum", "label"]
    assert list(ds.offset.values) == [-1, 0, 1, 2, 3]
    assert ds["keys"].dims == ("kv_prompt", "layer", "kv_head", "demo", "offset", "head_dim")
    assert ds.sizes["kv_prompt"] == 5 and ds.sizes["kv_head"] == 2 and ds.sizes["head"] == 4
    _, reference = eager_reference(toy["manifest"]["path"], [r["input_ids"] for r in records])
    attention = ds.attention.values
    lengths = ds.length.values
    kernel = ds.kernel_weight.values
    for i, (record, ref) in enumerate(zip(records, reference)):
        n = len(record["input_ids"])
        assert lengths[i] == n
        assert np.abs(attention[i, :, :, :n] - ref["rows"]).max() <= 1e-5
        assert np.isnan(attention[i, :, :, n:]).all()
        logits = ref["logits"][meta["label_token_ids"]]
        np.testing.assert_allclose(ds.label_logits.values[i], logits, atol=1e-4)
        assert ds.prediction.values[i] == int(np.argmax(ds.label_logits.values[i]))
        assert ds.gold.values[i] == record["gold"] and ds.split.values[i] == record["split"]
        for d in range(ds.sizes["demo"]):
            if d >= len(record["demos"]):
                assert ds.demo_label.values[i, d] == -1 and np.isnan(kernel[i, :, :, :, d]).all()
                assert ds.input_start.values[i, d] == -1 and np.isnan(ds.sim_pred.values[i, d])
                continue
            demo = record["demos"][d]
            start, label = demo["input_span"][0], demo["label_pos"]
            assert (ds.input_start.values[i, d], ds.label_pos.values[i, d]) == (start, label)
            assert ds.demo_label.values[i, d] == demo["label"]
            span = attention[i, :, :, start : label + 1]
            np.testing.assert_array_equal(kernel[i, 0, :, :, d], span.max(-1))
            np.testing.assert_allclose(kernel[i, 1, :, :, d], span.mean(-1), rtol=1e-6)
            np.testing.assert_allclose(kernel[i, 2, :, :, d], span.sum(-1), rtol=1e-6)
            np.testing.assert_array_equal(kernel[i, 3, :, :, d], attention[i, :, :, label])
        if i < 5:
            pos = np.array([[d["label_pos"] + o for o in range(-1, 4)] for d in record["demos"]])
            inside = pos < n
            keys = ds["keys"].values[i, :, :, : len(record["demos"])]
            expected = ref["keys"][:, :, np.minimum(pos, n - 1), :]
            assert np.abs(np.where(inside[None, None, ..., None], keys - expected, 0)).max() <= 1e-5
            assert np.isnan(keys[:, :, ~inside]).all()
            values = ds["values"].values[i, :, :, : len(record["demos"])]
            expected = ref["values"][:, :, np.minimum(pos, n - 1), :]
            assert np.abs(np.where(inside[None, None, ..., None], values - expected, 0)).max() <= 1e-5
    assert ds.attrs["label_names"] == meta["label_names"] and ds.attrs["rotary"] is True
    assert ds.attrs["capture"]["kv_prompts"] == 5 and "transformers" in ds.attrs["versions"]
    assert ds.prompt_text.values[0] == records[0]["text"]


@pytest.mark.parametrize("context", ["raw", "template"])
def test_sim_pred_is_eq9_on_inputs_alone(toy, tmp_path, context):
    """sim_pred = P(o|x_test)ᵀ P(o|x_i), each input run on its own: raw text, or alone in the template."""
    from transformers import AutoTokenizer

    from kicl.prompts.build import query_ids

    store = toy["store"]
    if context == "template":
        store = tmp_path / "template.zarr"
        run_capture(toy["meta"], toy["prompts"], toy["manifest"], store, {**CAPTURE, "simpred_context": context})
    ds = open_store(store)
    tokenizer = AutoTokenizer.from_pretrained(toy["manifest"]["path"])
    template = json.loads(toy["meta"].read_text())["template"]
    texts = sorted({r["test_text"] for r in toy["records"]} | {d["text"] for r in toy["records"] for d in r["demos"]})
    if context == "raw":
        sequences = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    else:
        sequences = [query_ids(tokenizer, template, t) for t in texts]
        assert tokenizer.decode(sequences[0]) == f"Input: {texts[0]} Output:"
    _, reference = eager_reference(toy["manifest"]["path"], sequences)
    probs = {t: torch.softmax(torch.tensor(ref["logits"], dtype=torch.float64), -1).numpy() for t, ref in zip(texts, reference)}
    for i, record in enumerate(toy["records"]):
        p_test = probs[record["test_text"]]
        assert ds.test_top_token.values[i] == int(np.argmax(p_test))
        for d, demo in enumerate(record["demos"]):
            np.testing.assert_allclose(ds.sim_pred.values[i, d], p_test @ probs[demo["text"]], rtol=1e-4)
            assert ds.demo_top_token.values[i, d] == int(np.argmax(probs[demo["text"]]))


def test_store_layout_is_prompt_chunked_and_compressed(toy):
    group = zarr.open_group(str(toy["store"]), mode="r")
    attention = group["attention"]
    assert attention.metadata.zarr_format == 3
    assert attention.metadata.dimension_names == ("prompt", "layer", "head", "position")
    assert attention.chunks[0] == 1 and attention.chunks[1:] == attention.shape[1:]
    assert attention.compressors and "blosc" in type(attention.compressors[0]).__name__.lower()
    assert group["keys"].chunks[0] == 1


def test_bad_prompt_file_is_named_before_loading(toy, tmp_path):
    lines = toy["prompts"].read_text().splitlines()
    record = json.loads(lines[2])
    record["demos"][0]["label_pos"] = 10_000
    lines[2] = json.dumps(record)
    bad = tmp_path / "prompts.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="prompt 2: label_pos 10000"):
        run_capture(toy["meta"], bad, {"path": str(tmp_path / "no-such-model")}, tmp_path / "x.zarr", CAPTURE)


def test_shard_dir_accepts_only_verified_shards(tmp_path):
    parts = ShardDir(tmp_path / "p", "fp-1")
    parts.write_arrays("shard-00000.npz", {"a": np.arange(5)})
    assert parts.is_complete("shard-00000.npz")
    np.testing.assert_array_equal(parts.read_arrays("shard-00000.npz")["a"], np.arange(5))
    # a truncated shard with its old marker, a shard without marker, a marker with a wrong hash
    parts.write_arrays("shard-00001.npz", {"a": np.arange(100)})
    full = (tmp_path / "p" / "shard-00001.npz").read_bytes()
    (tmp_path / "p" / "shard-00001.npz").write_bytes(full[: len(full) // 2])
    (tmp_path / "p" / "shard-00002.npz").write_bytes(full)
    (tmp_path / "p" / "shard-00003.npz").write_bytes(full)
    (tmp_path / "p" / "shard-00003.npz.done").write_text(json.dumps({"bytes": len(full), "sha256": "0" * 64}))
    (tmp_path / "p" / "shard-00004.npz.done").write_text("{not json")
    (tmp_path / "p" / "shard-00005.npz.tmp-123").write_bytes(full)
    names = [f"shard-{i:05d}.npz" for i in range(6)]
    reopened = ShardDir(tmp_path / "p", "fp-1")
    assert reopened.complete(names) == ["shard-00000.npz"]
    assert not (tmp_path / "p" / "shard-00005.npz.tmp-123").exists()
    # another fingerprint (changed inputs or options) discards everything
    assert ShardDir(tmp_path / "p", "fp-2").complete(names) == []


RUNNER = """
import json, sys, time
from kicl.capture.run import run_capture
args = json.loads(sys.argv[1])
delay = args.pop("delay")
def done(name):
    print(name, flush=True)
    time.sleep(delay)
run_capture(**args, threads=1, on_shard_done=done)
"""


def _start(toy, store, delay):
    args = {"meta_path": str(toy["meta"]), "prompts_path": str(toy["prompts"]), "manifest": toy["manifest"],
            "store_path": str(store), "capture": {**CAPTURE, "shard_size": 2, "batch_size": 2}, "delay": delay}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", RUNNER, json.dumps(args)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env)


def _all_arrays(path):
    group = zarr.open_group(str(path), mode="r")
    return {name: array[...] for name, array in group.arrays()}, dict(group.attrs)


def test_kill_and_resume_equals_uninterrupted_run(toy, tmp_path):
    reference = tmp_path / "ref" / "toy.zarr"
    assert _start(toy, reference, 0.0).wait(timeout=300) == 0
    resumed = tmp_path / "resumed" / "toy.zarr"
    parts = resumed.parent / "toy.parts"
    victim = _start(toy, resumed, 2.0)
    deadline = time.time() + 300
    while len(list(parts.glob("shard-*.npz.done"))) < 2:
        assert victim.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL
    assert not resumed.exists()
    completed = sorted(p.name[: -len(".done")] for p in parts.glob("shard-*.npz.done"))
    assert len(completed) in (2, 3)
    # a half-written next shard (no marker) must be recomputed, not trusted
    half = parts / "shard-00004.npz"
    half.write_bytes((parts / completed[0]).read_bytes()[:100])
    rerun = _start(toy, resumed, 0.0)
    out, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0
    recomputed = out.split()
    assert not set(recomputed) & set(completed) and "shard-00004.npz" in recomputed
    assert len(recomputed) + len(completed) == 5
    assert not parts.exists()
    ref_arrays, ref_attrs = _all_arrays(reference)
    got_arrays, got_attrs = _all_arrays(resumed)
    assert ref_arrays.keys() == got_arrays.keys()
    for name, expected in ref_arrays.items():
        got = got_arrays[name]
        assert got.dtype == expected.dtype and got.shape == expected.shape, name
        if expected.dtype.kind == "f":
            assert np.array_equal(got, expected, equal_nan=True), name
        else:
            assert np.array_equal(got, expected), name
    assert got_attrs == ref_attrs


def test_forward_pass_rule_writes_the_store(toy, run_workflow, tmp_path):
    """The Snakemake rule on ready prompt files and a model manifest (tiny model in place of the default one)."""
    from conftest import copy_workflow

    workdir = copy_workflow(tmp_path / "workflow")
    model, task = "smollm2-135m", "movie_snippets"  # names in the default selection
    prompts_dir = workdir / "results" / "prompts" / model / task
    prompts_dir.mkdir(parents=True)
    for name in ("meta.json", "prompts.jsonl"):
        (prompts_dir / name).write_bytes((toy["meta"].parent / name).read_bytes())
    manifest = workdir / "resources" / "models" / f"{model}.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps(toy["manifest"]))
    target = f"results/forward/{model}/{task}.zarr"
    overrides = {"capture": {"shard_size": 3, "kv_prompts": 2, "simpred_context": "template"}}
    result = run_workflow(tmp_path, overrides, [target, "--allowed-rules", "forward_pass"])
    assert result.returncode == 0, result.stdout + result.stderr
    ds = open_store(workdir / target)
    assert ds.sizes["prompt"] == 10 and ds.sizes["kv_prompt"] == 2
    assert ds.attrs["capture"]["simpred_context"] == "template"
    assert ds.attrs["config"]["models"][model]["source"] == "packaged_gguf"  # the catalog entry is recorded
    assert not (workdir / f"results/forward/{model}/{task}.parts").exists()
    log = (workdir / f"logs/forward_pass/{model}/{task}.log").read_text()
    assert "forward tiny/toy" in log and "100%" in log and "4 shards (0 complete)" in log  # progress bar
    assert (workdir / f"benchmarks/out/forward_pass/{model}/{task}.tsv").exists()
