"""The causal head-ablation stage: head sets, the run on a tiny model against its forward store, the summary."""

import os

import numpy as np
import pandas as pd
import pytest
import torch
from forward_fixtures import make_model_folder, make_prompts

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from kicl.analysis.ablation import summarise, top_vs_random  # noqa: E402
from kicl.capture.ablation import conditions, layer_matched_draw, margins, rank_heads, run_ablation  # noqa: E402


def test_rank_and_random_draws_are_seeded_and_layer_matched():
    rng = np.random.default_rng(0)
    scores = rng.random((6, 5))
    ranked = rank_heads(scores)
    assert ranked[0] == np.unravel_index(scores.argmax(), scores.shape)
    assert len(set(ranked)) == 30
    first = conditions(scores, [1, 4, 8], ["zero"], random_draws=3, seed=7)
    again = conditions(scores, [1, 4, 8], ["zero"], random_draws=3, seed=7)
    other = conditions(scores, [1, 4, 8], ["zero"], random_draws=3, seed=8)
    assert first == again and first != other
    for c in first:
        assert len(c.heads) == c.k == len(set(c.heads))
        if c.ranking == "random":
            top = next(t for t in first if t.ranking == "top" and t.k == c.k)
            assert sorted(layer for layer, _ in c.heads) == sorted(layer for layer, _ in top.heads)
    draws = {c.heads for c in first if c.ranking == "random" and c.k == 8}
    assert len(draws) > 1
    # a layer whose heads are all taken falls back to all of its heads
    assert layer_matched_draw([(0, h) for h in range(5)], 5, np.random.default_rng(0)) == [(0, h) for h in range(5)]
    with pytest.raises(ValueError, match="causal.k"):
        conditions(scores, [31], ["zero"], 1, 0)


def test_margins():
    logits = np.array([[2.0, 1.0, 0.5], [0.0, 3.0, 1.0]])
    np.testing.assert_allclose(margins(logits, np.array([0, 2])), [1.0, -2.0])


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    from kicl.capture.run import run_capture

    root = tmp_path_factory.mktemp("ablation")
    manifest = make_model_folder(root / "model", "llama", seed=5)
    meta, prompts = make_prompts(root / "prompts", root / "model", n_prompts=12, demos=(2, 4))
    capture = {"dtype": "float32", "shard_size": 4, "kv_prompts": 0}  # compared with float32 references
    store = run_capture(meta, prompts, manifest, root / "store.zarr", capture)
    return root, manifest, meta, prompts, store


def test_run_ablation_against_the_store(tiny_store):
    import xarray as xr

    root, manifest, meta, prompts, store = tiny_store
    causal = {"k": [1, 3], "modes": ["zero", "mean", "knockout"], "random_draws": 2, "batch_size": 3}
    frame = run_ablation(meta, prompts, manifest, store, root / "p.csv", root / "h.csv", causal=causal)
    ds = xr.open_zarr(store)
    from kicl.store.reader import string_values

    heldout = np.flatnonzero(string_values(ds["split"]) == "heldout")
    none = frame[frame["mode"] == "none"]
    assert none["prompt"].tolist() == heldout.tolist() and none["flipped"].sum() == 0
    np.testing.assert_array_equal(none["correct"], ds["prediction"].values[heldout] == ds["gold"].values[heldout])
    n_conditions = 3 * 2 * (2 + 2)
    assert len(frame) == len(heldout) * (1 + n_conditions)
    assert (frame.loc[frame["mode"] != "none", "margin_change"].abs() > 1e-6).any()
    heads = pd.read_csv(root / "h.csv")
    assert heads["no_ablation_max_abs_diff"].iloc[0] < 1e-3
    summary = summarise(pd.read_csv(root / "p.csv"), n_boot=50)
    assert set(summary["ranking"]) == {"none", "top", "random", "bottom"}
    row = summary[(summary.ranking == "none")].iloc[0]
    assert row["flip_share"] == 0 and row["accuracy_lo"] <= row["accuracy"] <= row["accuracy_hi"]
    assert set(top_vs_random(summary).columns) >= {"mode", "k", "separated"}


def test_no_ablation_in_the_forward_batches_reproduces_store_logits_exactly(tiny_store):
    """The session with an intervention handler that selects no head, on the forward pass's own batches."""
    import xarray as xr
    from transformers import AutoModelForCausalLM

    from kicl.capture.handlers import HeadAblation
    from kicl.capture.run import read_prompts
    from kicl.capture.session import CaptureSession

    root, manifest, meta_path, prompts_path, store = tiny_store
    meta, prompts = read_prompts(meta_path, prompts_path)
    model = AutoModelForCausalLM.from_pretrained(manifest["path"], dtype=torch.float32).eval()
    ds = xr.open_zarr(store)
    got = np.empty_like(ds["label_logits"].values)
    with CaptureSession(model, [HeadAblation([], "zero")]) as session:
        for start in range(0, len(prompts), 4):  # capture.shard_size 4, batch_size 4 (the schema's default)
            shard = list(range(start, min(start + 4, len(prompts))))
            order = sorted(shard, key=lambda i: -len(prompts[i]["input_ids"]))
            logits = session.run([prompts[i]["input_ids"] for i in order], "right")
            got[order] = logits[:, meta["label_token_ids"]].numpy()
    np.testing.assert_array_equal(got, ds["label_logits"].values)
