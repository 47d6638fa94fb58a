"""The shared P(o|x) cache: reuse across captures, safety against concurrent and broken writers, its key."""

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import eager_reference, make_model_folder, make_prompts

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from kicl.capture.options import CaptureOptions  # noqa: E402
from kicl.capture.run import CaptureJob, run_capture  # noqa: E402
from kicl.capture.simpred import context_ids  # noqa: E402
from kicl.capture.simpred_cache import SimpredCache, cache_key, entry_key, model_kernel_similarity  # noqa: E402
from kicl.store.reader import open_store  # noqa: E402

CAPTURE = {"dtype": "float32", "batch_size": 3, "shard_size": 2, "kv_prompts": 0}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("simpred")
    manifest = make_model_folder(root / "model", "llama", seed=5)
    meta, prompts = make_prompts(root / "prompts", manifest["path"], n_prompts=10, demos=(2, 4))
    records = [json.loads(line) for line in prompts.read_text().splitlines()]
    return {"root": root, "manifest": manifest, "meta": meta, "prompts": prompts, "records": records}


def _texts(records):
    return list(dict.fromkeys(t for r in records for t in [r["test_text"], *(d["text"] for d in r["demos"])]))


def _cache(toy, root, **overrides):
    from kicl.data.models import load_tokenizer

    options = CaptureOptions.from_config({**CAPTURE, **overrides}, toy["manifest"])
    meta = json.loads(toy["meta"].read_text())
    return SimpredCache(root, toy["manifest"], options, load_tokenizer(toy["manifest"]), meta)


def _reference_probs(toy, texts, mode="raw"):
    """P(o|x) of each text from a plain eager run of the input alone (float64 softmax)."""
    from kicl.data.models import load_tokenizer

    tokenizer = load_tokenizer(toy["manifest"])
    meta = json.loads(toy["meta"].read_text())
    sequences = [context_ids(tokenizer, meta, mode, t) for t in texts]
    _, reference = eager_reference(toy["manifest"]["path"], sequences)
    return np.stack([torch.softmax(torch.tensor(r["logits"], dtype=torch.float64), -1).numpy() for r in reference])


def _reuse_counts(caplog) -> tuple[int, int]:
    """(reused, computed) from the last 'P(o|x) of N unique inputs: R reused from ..., C computed' log line."""
    import re

    lines = [r.getMessage() for r in caplog.records if "unique inputs:" in r.getMessage()]
    found = re.search(r"(\d+) reused from .*, (\d+) computed", lines[-1])
    return int(found.group(1)), int(found.group(2))


def test_second_capture_computes_only_new_texts_and_matches_uncached(toy, tmp_path, caplog):
    caplog.set_level("INFO", logger="kicl.capture.run")
    first = tmp_path / "first"
    first.mkdir()
    lines = toy["prompts"].read_text().splitlines()
    (first / "prompts.jsonl").write_text("\n".join(lines[:4]) + "\n")
    cache_root = tmp_path / "simpred"
    store_a = run_capture(toy["meta"], first / "prompts.jsonl", toy["manifest"], tmp_path / "a.zarr", CAPTURE,
                          CaptureJob(simpred_cache=cache_root))  # fmt: skip
    texts_a, texts_b = _texts(toy["records"][:4]), _texts(toy["records"])
    shared = set(texts_a) & set(texts_b)
    assert 0 < len(shared) < len(texts_b), "the second prompt set must share some inputs and add others"
    assert _reuse_counts(caplog) == (0, len(texts_a))
    assert open_store(store_a).attrs["simpred"]["cache"].startswith(str(cache_root))

    cached = run_capture(toy["meta"], toy["prompts"], toy["manifest"], tmp_path / "b.zarr", CAPTURE,
                         CaptureJob(simpred_cache=cache_root))  # fmt: skip
    assert _reuse_counts(caplog) == (len(shared), len(texts_b) - len(shared))
    plain = run_capture(toy["meta"], toy["prompts"], toy["manifest"], tmp_path / "plain.zarr", CAPTURE)
    ds, ref = open_store(cached), open_store(plain)
    record = ds.attrs["simpred"]
    assert Path(record["cache"]).parent == cache_root and ref.attrs["simpred"]["cache"] is None
    assert not (tmp_path / "plain.parts").exists(), "without a cache, P(o|x) lives and dies with the parts"
    np.testing.assert_allclose(ds.sim_pred.values, ref.sim_pred.values, rtol=1e-5, atol=1e-9)
    np.testing.assert_array_equal(ds.test_top_token.values, ref.test_top_token.values)
    np.testing.assert_array_equal(ds.demo_top_token.values, ref.demo_top_token.values)
    np.testing.assert_array_equal(ds.label_logits.values, ref.label_logits.values)
    # every cached entry is Eq. 9's P(o|x) of the input alone
    cache = _cache(toy, cache_root)
    assert cache.path == Path(record["cache"]) and cache.missing(texts_b) == []
    np.testing.assert_allclose(cache.get(texts_b), _reference_probs(toy, texts_b), atol=1e-6)


_WRITER = """
import json, sys
from kicl.capture.options import CaptureOptions
from kicl.capture.simpred_cache import SimpredCache
from kicl.data.models import load_tokenizer
manifest, meta, root, texts = json.loads(sys.argv[1])
options = CaptureOptions.from_config({"dtype": "float32", "shard_size": 1}, manifest)
cache = SimpredCache(root, manifest, options, load_tokenizer(manifest), json.load(open(meta)))
print(json.dumps(cache.fill(texts, shard_inputs=2)))
"""


@pytest.mark.slow
def test_concurrent_writers_and_broken_shards_are_safe(toy, tmp_path):
    texts = _texts(toy["records"][:3])
    root = tmp_path / "simpred"
    argument = json.dumps([toy["manifest"], str(toy["meta"]), str(root), texts])
    environment = os.environ | {"OMP_NUM_THREADS": "1"}
    writers = [
        subprocess.Popen([sys.executable, "-c", _WRITER, argument], stdout=subprocess.PIPE, text=True, env=environment)
        for _ in range(2)
    ]
    results = [json.loads(w.communicate(timeout=300)[0].splitlines()[-1]) for w in writers]
    assert all(w.returncode == 0 for w in writers)
    assert all(reused + computed == len(texts) for reused, computed in results)
    expected = _reference_probs(toy, texts)
    cache = _cache(toy, root, shard_size=1)
    np.testing.assert_allclose(cache.get(texts), expected, atol=1e-6)
    shards = sorted(cache.path.glob("part-*.npy"))
    assert len(shards) >= -(-len(texts) // 2)

    # leftovers of a killed writer: an array without its index, a temporary, an unreadable index
    (cache.path / "part-0-dead.npy").write_bytes(shards[0].read_bytes())
    (cache.path / "part-1-dead.npy.tmp-1-x").write_bytes(b"\x93NUMPY")
    (cache.path / "part-2-dead.json").write_text("{not json")
    # truncate every shard: all of their entries become missing and are computed again
    for shard in shards:
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    broken = _cache(toy, root, shard_size=1)
    assert broken.missing(texts) == texts
    assert broken.fill(texts) == (0, len(texts))
    np.testing.assert_allclose(broken.get(texts), expected, atol=1e-6)
    assert _cache(toy, root, shard_size=1).missing(texts) == []


def test_key_follows_what_changes_the_values(toy, tmp_path):
    manifest = toy["manifest"]
    template = json.loads(toy["meta"].read_text())["template"]
    base = CaptureOptions.from_config(CAPTURE, manifest)
    key = cache_key(manifest, base, template)
    assert key == cache_key(manifest, replace(base, batch_size=9, shard_size=5, kv_prompts=7), template)
    assert key == cache_key(manifest, base, {**template, "input_prefix": "Q: "}), "raw P(o|x) ignores the template"
    assert key == cache_key({**manifest, "device": "cuda"}, base, template), "the options carry dtype and device"
    changed = [
        cache_key(manifest, replace(base, dtype="bfloat16"), template),
        cache_key(manifest, replace(base, simpred_context="template"), template),
        cache_key(manifest, replace(base, padding_side="left"), template),
        cache_key(manifest, replace(base, device="cuda:1"), template),
        cache_key({**manifest, "path": str(tmp_path)}, base, template),
    ]
    assert len({key, *changed}) == len(changed) + 1
    in_template = replace(base, simpred_context="template")
    assert cache_key(manifest, in_template, template) != cache_key(manifest, in_template, {**template, "x": 1})
    assert entry_key([1, 2, 3]) == entry_key(np.array([1, 2, 3], np.int32)) != entry_key([1, 2, 4])


def test_model_kernel_similarity_is_eq9_and_reuses_the_cache(toy, tmp_path):
    records = toy["records"]
    tests = [r["test_text"] for r in records[:3]]
    pool = list(dict.fromkeys(d["text"] for r in records for d in r["demos"]))
    root = tmp_path / "simpred"
    template = json.loads(toy["meta"].read_text())["template"]
    similarity = model_kernel_similarity(toy["manifest"], CAPTURE, root, template, tests, pool, pool_block=3)
    p_test, p_pool = _reference_probs(toy, tests), _reference_probs(toy, pool)
    assert similarity.shape == (len(tests), len(pool))
    np.testing.assert_allclose(similarity, p_test @ p_pool.T, rtol=1e-4)
    shards = sorted(root.glob("*/part-*"))
    again = model_kernel_similarity(toy["manifest"], CAPTURE, root, template, tests[:1], pool[:2], threads=1)
    np.testing.assert_allclose(again, similarity[:1, :2], rtol=1e-12)
    assert sorted(root.glob("*/part-*")) == shards, "a second call computes nothing"
