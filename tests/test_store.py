"""The forward store: contents against eager references, layout, the shard directory and kill-and-resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from helpers import eager_reference, make_model_folder, make_prompts

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from kicl.capture.run import run_capture  # noqa: E402
from kicl.fileio import atomic_directory, write_csv_atomic  # noqa: E402
from kicl.store import schema  # noqa: E402
from kicl.store.pooling import POOLINGS, kernel_weights  # noqa: E402
from kicl.store.reader import StoreError, open_store  # noqa: E402
from kicl.store.synthetic import make_synthetic_store  # noqa: E402
from kicl.store.writer import ForwardStoreWriter, ShardDir  # noqa: E402

# float32: the stores are compared with float32 eager attention (auto may pick bfloat16 on a bfloat16 CPU)
CAPTURE = {"dtype": "float32", "batch_size": 3, "shard_size": 4, "kv_prompts": 5, "kv_offsets": [-1, 0, 1, 2, 3]}


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


def _eager_probs(toy, context: str) -> dict[str, np.ndarray]:
    """P(o|x) (float64) of every test and demonstration text of the toy prompts from eager runs of the input alone."""
    from transformers import AutoTokenizer

    from kicl.prompts.build import query_ids

    tokenizer = AutoTokenizer.from_pretrained(toy["manifest"]["path"])
    template = json.loads(toy["meta"].read_text())["template"]
    texts = sorted({r["test_text"] for r in toy["records"]} | {d["text"] for r in toy["records"] for d in r["demos"]})
    if context == "raw":
        sequences = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    else:
        sequences = [query_ids(tokenizer, template, t) for t in texts]
        assert tokenizer.decode(sequences[0]) == f"Input: {texts[0]} Output:"
    _, reference = eager_reference(toy["manifest"]["path"], sequences)
    logits = {t: torch.tensor(ref["logits"], dtype=torch.float64) for t, ref in zip(texts, reference)}
    return {t: torch.softmax(value, -1).numpy() for t, value in logits.items()}


@pytest.mark.parametrize("context", ["raw", "template"])
def test_sim_pred_is_eq9_on_inputs_alone(toy, tmp_path, context):
    """sim_pred = P(o|x_test)ᵀ P(o|x_i), each input run on its own: raw text, or alone in the template."""
    store = toy["store"]
    if context == "template":
        store = tmp_path / "template.zarr"
        run_capture(toy["meta"], toy["prompts"], toy["manifest"], store, {**CAPTURE, "simpred_context": context})
    ds = open_store(store)
    probs = _eager_probs(toy, context)
    for i, record in enumerate(toy["records"]):
        p_test = probs[record["test_text"]]
        assert ds.test_top_token.values[i] == int(np.argmax(p_test))
        for d, demo in enumerate(record["demos"]):
            np.testing.assert_allclose(ds.sim_pred.values[i, d], p_test @ probs[demo["text"]], rtol=1e-4)
            assert ds.demo_top_token.values[i, d] == int(np.argmax(probs[demo["text"]]))


def test_demo_hubness_is_the_mean_sim_pred_with_the_other_test_inputs(toy):
    """demo_hubness[p, i] = mean over the other prompts q of P(o|x_test_q)ᵀ P(o|x_{p,i}), from eager P(o|x); NaN at
    absent demonstrations."""
    ds = open_store(toy["store"], needs=["demo_hubness", "sim_pred"])
    probs = _eager_probs(toy, "raw")
    tests = np.stack([probs[r["test_text"]] for r in toy["records"]])
    hubness = ds["demo_hubness"].values
    for p, record in enumerate(toy["records"]):
        others = np.delete(tests, p, axis=0)
        for d in range(ds.sizes["demo"]):
            if d >= len(record["demos"]):
                assert np.isnan(hubness[p, d])
                continue
            expected = np.mean(others @ probs[record["demos"][d]["text"]])
            np.testing.assert_allclose(hubness[p, d], expected, rtol=1e-4)
    # every shown demonstration has one, whether or not its input recurs in another prompt
    assert np.isfinite(hubness).sum() == sum(len(r["demos"]) for r in toy["records"])


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
from kicl.capture.run import CaptureJob, run_capture
args = json.loads(sys.argv[1])
delay = args.pop("delay")
def done(name):
    print(name, flush=True)
    time.sleep(delay)
run_capture(**args, job=CaptureJob(threads=1, on_shard_done=done))
"""


def _start(toy, store, delay):
    args = {
        "meta_path": str(toy["meta"]),
        "prompts_path": str(toy["prompts"]),
        "manifest": toy["manifest"],
        "store_path": str(store),
        "capture": {**CAPTURE, "shard_size": 2, "batch_size": 2},
        "delay": delay,
    }
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", RUNNER, json.dumps(args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )


def _all_arrays(path):
    group = zarr.open_group(str(path), mode="r")
    return {name: array[...] for name, array in group.arrays()}, dict(group.attrs)


@pytest.mark.slow
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
    from helpers import copy_workflow

    workdir = copy_workflow(tmp_path / "workflow")
    model, task = "smollm2-135m", "movie_snippets"  # names in the default selection
    prompts_dir = workdir / "results" / "prompts" / model / task / "paper"
    prompts_dir.mkdir(parents=True)
    for name in ("meta.json", "prompts.jsonl"):
        (prompts_dir / name).write_bytes((toy["meta"].parent / name).read_bytes())
    manifest = workdir / "resources" / "models" / f"{model}.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps(toy["manifest"]))
    target = f"results/forward/{model}/{task}/paper.zarr"
    overrides = {"capture": {"dtype": "float32", "shard_size": 3, "kv_prompts": 2, "simpred_context": "template"}}
    result = run_workflow(tmp_path, overrides, [target, "--allowed-rules", "forward_pass"])
    assert result.returncode == 0, result.stdout + result.stderr
    ds = open_store(workdir / target)
    assert ds.sizes["prompt"] == 10 and ds.sizes["kv_prompt"] == 2
    assert ds.attrs["capture"]["simpred_context"] == "template"
    assert ds.attrs["config"]["models"][model]["source"] == "packaged_gguf"  # the catalog entry is recorded
    assert not (workdir / f"results/forward/{model}/{task}/paper.parts").exists()
    log = (workdir / f"logs/forward_pass/{model}/{task}/paper.log").read_text()
    assert "forward tiny/toy" in log and "100%" in log and "4 shards (0 complete)" in log  # progress bar
    assert (workdir / f"benchmarks/out/forward_pass/{model}/{task}/paper.tsv").exists()


# ---------------------------------------------------------------- the schema: writer, reader, docs, synthetic stores

DOCS = Path(__file__).resolve().parents[1] / "docs" / "store.md"


def _declared_arrays(path) -> dict[str, tuple[tuple[str, ...], np.dtype]]:
    group = zarr.open_group(str(path), mode="r")
    return {name: (tuple(array.metadata.dimension_names), array.dtype) for name, array in group.arrays()}


def _assert_follows_schema(path, rotary: bool, with_kv: bool, hubness: bool = False):
    arrays = _declared_arrays(path)
    expected = schema.forward_variables(rotary=rotary, with_kv=with_kv, hubness=hubness)
    coordinates = {d.name for d in schema.DIMENSIONS if d.coordinate is not None}
    if not with_kv:
        coordinates -= {"kv_prompt", "offset"}
    assert set(arrays) == set(expected) | coordinates
    for name, var in expected.items():
        dims, dtype = arrays[name]
        assert dims == var.dims, name
        assert schema.dtype_matches(var.dtype, dtype), (name, dtype)
    for name in coordinates:
        assert arrays[name][0] == (name,)


def test_capture_store_has_exactly_the_schema_arrays(toy):
    _assert_follows_schema(toy["store"], rotary=True, with_kv=True, hubness=True)


@pytest.mark.parametrize("kv_prompts", [0, 7])
def test_synthetic_store_is_written_through_the_writer(tmp_path, kv_prompts):
    path = make_synthetic_store(tmp_path / "s.zarr", n_prompts=12, kv_prompts=kv_prompts, min_demos=3, seed=4)
    _assert_follows_schema(path, rotary=False, with_kv=kv_prompts > 0)
    group = zarr.open_group(str(path), mode="r")
    assert group["attention"].chunks[0] == 1 and "blosc" in type(group["attention"].compressors[0]).__name__.lower()
    ds = open_store(path, needs="all")
    assert list(ds["pooling"].values) == list(POOLINGS)
    # its kernel weights are the shared pooling of its own attention rows
    for p in range(ds.sizes["prompt"]):
        expected = kernel_weights(ds.attention.values[p], ds.input_start.values[p], ds.label_pos.values[p])
        np.testing.assert_array_equal(ds.kernel_weight.values[p], expected)
    assert not list(tmp_path.glob("*.tmp-*"))


def _small_store(path, drop=(), replace=None):
    """A store written by xarray (not the writer), with variables dropped or replaced, to test the reader."""
    import xarray as xr

    ds = xr.open_zarr(make_synthetic_store(path.with_name("src.zarr"), n_prompts=6, kv_prompts=2), chunks=None)
    ds = ds.load().drop_vars(list(drop))
    for name, value in (replace or {}).items():
        ds[name] = value
    ds.to_zarr(path, mode="w", zarr_format=3, consolidated=False)
    return path


def test_open_store_names_a_missing_variable(tmp_path):
    path = _small_store(tmp_path / "bad.zarr", drop=["sim_pred", "keys"])
    with pytest.raises(StoreError, match="'sim_pred'"):
        open_store(path, needs=["attention", "sim_pred"])
    with pytest.raises(StoreError, match="'keys' .*with kv"):
        open_store(path, needs=["keys"])
    with pytest.raises(StoreError, match="'sim_pred'"):
        open_store(path, needs="all")
    open_store(path, needs=["attention", "kernel_weight"])  # what is there passes


def test_open_store_names_a_wrong_dim_or_dtype(tmp_path):
    import xarray as xr

    good = xr.open_zarr(make_synthetic_store(tmp_path / "g.zarr", n_prompts=6), chunks=None)
    swapped = xr.DataArray(good["label_pos"].values.T, dims=("demo", "prompt"))
    path = _small_store(tmp_path / "dims.zarr", replace={"label_pos": swapped})
    with pytest.raises(StoreError, match="'label_pos' has dims \\('demo', 'prompt'\\)"):
        open_store(path, needs=["label_pos"])
    as_float = good["gold"].astype("float64")
    path = _small_store(tmp_path / "dtype.zarr", replace={"gold": as_float})
    with pytest.raises(StoreError, match="'gold' has dtype float64, the schema says int64"):
        open_store(path, needs=["prediction", "gold"])
    with pytest.raises(StoreError, match="does not exist"):
        open_store(tmp_path / "nowhere.zarr")


def test_writer_takes_only_schema_variables_and_refuses_unwritten_rows(tmp_path):
    variables = schema.forward_variables(rotary=False, with_kv=False)
    sizes, coords = schema.layout(
        schema.StoreSizes(
            n_prompts=3,
            n_layers=1,
            n_heads=2,
            n_kv_heads=2,
            n_positions=5,
            label_names=["a", "b"],
            n_demos=2,
            n_kv_prompts=0,
            offsets=[0],
            head_dim=4,
        )
    )
    wrong = {**variables, "length": schema.Variable("length", ("prompt",), "float32", "wrong")}
    with pytest.raises(ValueError, match="'length' is not the one declared"):
        ForwardStoreWriter(tmp_path / "w.zarr", sizes, coords, wrong, {})
    writer = ForwardStoreWriter(tmp_path / "x.zarr", sizes, coords, variables, {})
    for name, var in variables.items():
        shape = tuple(sizes[d] for d in var.dims)
        value = np.zeros(shape, dtype=str if var.dtype == "str" else var.dtype)
        writer.write(name, 0, value if name != "gold" else value[:2])  # prompt 2 of gold never written
    with pytest.raises(ValueError, match=r"never written: gold \(1 rows\)"):
        writer.finalize()
    writer.write("gold", 2, np.zeros(1, np.int64))
    writer.finalize()
    with pytest.raises(ValueError, match="'length'"):
        writer.write("length", 0, np.zeros((3, 2), np.int64))


def _markdown_rows(text: str, header: str) -> list[list[str]]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2 :]:
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        if not line.startswith("| `"):
            break
        rows.append(cells)
    return rows


def test_docs_variable_table_is_the_schema():
    text = DOCS.read_text(encoding="utf-8")
    assert f"{schema.TABLE_BEGIN}\n{schema.markdown_table()}\n{schema.TABLE_END}" in text, (
        "docs/store.md is out of date: run `python -m kicl.store.schema docs/store.md`"
    )
    rows = _markdown_rows(text, "| variable |")
    documented = {row[0].strip("`"): (tuple(d.strip() for d in row[1].split(",")), row[2], row[3]) for row in rows}
    assert documented == {v.name: (v.dims, v.dtype, v.present) for v in schema.VARIABLES}
    dims = {name.strip("`") for row in _markdown_rows(text, "| dimension |") for name in row[0].split(", ")}
    assert dims == set(schema.DIMENSION_NAMES)


def test_atomic_directory_keeps_the_old_folder_on_failure(tmp_path):
    target = tmp_path / "out"
    with atomic_directory(target) as tmp:
        tmp.mkdir()
        (tmp / "a.txt").write_text("first")
    (tmp_path / "out.tmp-99999").mkdir()  # left by a killed run
    with pytest.raises(RuntimeError, match="boom"), atomic_directory(target) as tmp:
        tmp.mkdir()
        (tmp / "a.txt").write_text("second")
        raise RuntimeError("boom")
    assert (target / "a.txt").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with pytest.raises(FileNotFoundError, match="nothing was written"), atomic_directory(target):
        pass
    assert (target / "a.txt").read_text() == "first"


def test_write_csv_atomic(tmp_path):
    import pandas as pd

    path = write_csv_atomic(pd.DataFrame({"a": [1, 2]}), tmp_path / "sub" / "t.csv")
    assert path.read_text() == "a\n1\n2\n" and sorted(p.name for p in path.parent.iterdir()) == ["t.csv"]
