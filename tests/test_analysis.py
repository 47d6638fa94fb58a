"""Figure/table analyses on synthetic forward stores with planted, known answers."""

import os

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from kicl.analysis.attention_map import aligned_attention_map, interpolation_matrix, prompt_segments, resize
from kicl.analysis.encoder_kr import kernel_regression
from kicl.analysis.reconstruction import head_reconstruction, label_votes
from kicl.analysis.stats import bootstrap_mean
from kicl.figures.fig2_attention_map import attention_map_figure
from kicl.figures.fig3_reconstruction import ReconstructionOptions, reconstruction_figure
from kicl.store.reader import StoreError, open_store, string_values
from kicl.store.synthetic import Planted, make_synthetic_store
from kicl.tables.paper import paper_table2_value
from kicl.tables.table2 import Table2Options, table2, wide_table

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def random_store(tmp_path_factory):
    """No planted label head: predictions independent of attention."""
    return make_synthetic_store(
        tmp_path_factory.mktemp("stores") / "random.zarr",
        n_prompts=500,
        n_labels=3,
        n_layers=2,
        n_heads=3,
        kv_prompts=200,
        planted=Planted(label_head=None, simpred_head=None, kv_head=None),
        seed=2,
    )


# ---------------------------------------------------------------- reconstruction (Fig 3)


def test_label_votes_matches_loop():
    rng = np.random.default_rng(0)
    kw = rng.random((5, 2, 3, 4))  # (prompt, layer, head, demo)
    kw[0, ..., 3] = np.nan
    labels = rng.integers(0, 3, (5, 4))
    labels[0, 3] = -1
    votes = label_votes(kw, labels, 3)
    expected = np.zeros((5, 2, 3, 3))
    for p in range(5):
        for d in range(4):
            if labels[p, d] >= 0:
                expected[p, :, :, labels[p, d]] += kw[p, :, :, d]
    np.testing.assert_allclose(votes, expected)


def test_planted_label_head_reconstructs_everything(planted_store):
    ds = open_store(planted_store)
    scores = head_reconstruction(ds, np.arange(ds.sizes["prompt"]), ["max", "mean", "sum", "label"])
    layer, head = Planted().label_head
    for pooling in ["max", "sum", "label"]:
        assert scores["agree_pred"].sel(pooling=pooling).values[layer, head] == 1.0
    agree = scores["agree_pred"].sel(pooling="max").values.copy()
    agree[layer, head] = np.nan
    assert np.nanmax(agree) < 0.9  # no other head does it


def test_random_attention_gives_chance(random_store):
    ds = open_store(random_store)
    n = ds.sizes["prompt"]
    scores = head_reconstruction(ds, np.arange(n), ["max", "label"])
    chance = 1 / 3
    sd = np.sqrt(chance * (1 - chance) / n)
    for var in ["agree_pred", "acc_gold"]:
        values = scores[var].values
        assert np.all(np.abs(values - chance) < 4 * sd), values
        assert abs(values.mean() - chance) < 3 * sd


def test_reconstruction_figure_writes_csv_of_plotted_numbers(planted_store, tmp_path):
    out = [tmp_path / name for name in ("a.png", "b.png", "f.csv")]
    scores = reconstruction_figure(
        planted_store, *out, ReconstructionOptions(pools=["max", "label"], splits=["select"]), title="t"
    )
    frame = pd.read_csv(out[2])
    assert set(frame["pooling"]) == {"max", "label"}
    assert out[0].stat().st_size > 1000 and out[1].stat().st_size > 1000
    row = frame.query("pooling == 'max' and layer == 1 and head == 2").iloc[0]
    assert row["agree_pred"] == pytest.approx(float(scores["agree_pred"].sel(pooling="max").values[1, 2]))
    assert row["n_prompts"] == int((open_store(planted_store)["split"].values == "select").sum())


# ---------------------------------------------------------------- rescaling (Fig 2 / Fig 25)


@pytest.mark.parametrize("n_in", [1, 3, 7, 30, 45])
def test_values_mode_keeps_levels(n_in):
    const = np.full((2, n_in), 0.25)
    np.testing.assert_allclose(resize(const, 30, "values"), 0.25)
    ramp = np.linspace(0, 1, n_in)
    if n_in > 1:  # a linear profile stays linear between the end samples
        out = resize(ramp, 30, "values")
        inner = (out > 0) & (out < 1)
        assert np.allclose(np.diff(out[inner]), np.diff(out[inner])[0], atol=1e-12)
    np.testing.assert_allclose(interpolation_matrix(n_in, n_in, "values"), np.eye(n_in), atol=1e-12)


@pytest.mark.parametrize("n_in", [1, 3, 7, 30, 45])
def test_mass_mode_keeps_totals(n_in):
    seg = np.random.default_rng(n_in).random((4, 5, n_in))
    np.testing.assert_allclose(resize(seg, 30, "mass").sum(-1), seg.sum(-1))
    np.testing.assert_allclose(interpolation_matrix(n_in, n_in, "mass"), np.eye(n_in), atol=1e-12)


def test_single_prompt_map_keeps_every_token_and_total_mass(planted_store):
    ds = open_store(planted_store)
    length = int(ds["length"].values[5])
    raw = aligned_attention_map(ds, [5], rescale_len=None)
    assert raw.values.shape[-1] == length  # no averaging, every token a column
    np.testing.assert_allclose(raw.values[0, 0], ds["attention"].values[5, 0, 0, :length], rtol=1e-6)
    mass = aligned_attention_map(ds, [5], rescale_len=30, mode="mass")
    np.testing.assert_allclose(np.nansum(mass.values, -1), 1.0, rtol=1e-5)


def test_averaged_map_keeps_label_columns(planted_store):
    ds = open_store(planted_store)
    prompts = np.arange(ds.sizes["prompt"])
    amap = aligned_attention_map(ds, prompts, rescale_len=30, batch_size=7)
    att, label_pos = ds["attention"].values, ds["label_pos"].values
    col = amap.column_segment.index("y2")
    expected = np.mean([att[p, :, :, label_pos[p, 1]] for p in prompts], axis=0)
    np.testing.assert_allclose(amap.values[:, :, col], expected, rtol=1e-6)
    assert amap.column_segment.count("x1") == 30 and amap.column_segment.count("x_test") == 30
    # prompts with fewer demonstrations do not count in the columns of the demos they lack
    n_with_6 = int((ds["demo_label"].values[:, 5] >= 0).sum())
    assert amap.counts[amap.column_segment.index("y6")] == n_with_6 < len(prompts)


def test_prompt_segments_cover_the_prompt():
    segs = prompt_segments([2, 9], [5, 12], [6, 13], [7, 14], [8, 15], 17, 20, 21)
    spans = [(s, e) for _, _, s, e in segs if e > s]
    assert spans[0][0] == 0 and spans[-1][1] == 21
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))


def test_attention_map_figure_files(planted_store, tmp_path):
    attention_map_figure(planted_store, tmp_path / "m.png", tmp_path / "m.csv", title="t")
    frame = pd.read_csv(tmp_path / "m.csv")
    assert len(frame) == 3 * 4 and "y1" in frame.columns and "x_test_29" in frame.columns
    with pytest.raises(ValueError, match="single_prompt"):
        attention_map_figure(planted_store, tmp_path / "m.png", tmp_path / "m.csv", prompt=10_000)


# ---------------------------------------------------------------- Table 2 and encoder KR


def test_bootstrap_interval_covers():
    rng = np.random.default_rng(0)
    hits = 0
    for rep in range(200):
        sample = rng.random(150) < 0.7
        _, low, high = bootstrap_mean(sample, n_boot=400, seed=rep, level=0.95)
        hits += low <= 0.7 <= high
    assert 0.89 <= hits / 200 <= 0.99


def test_encoder_kr_equals_direct_computation():
    rng = np.random.default_rng(3)
    texts = [f"text {i}" for i in range(12)]
    emb = rng.normal(size=(12, 5))
    records = []
    for p in range(20):
        demo_ids = rng.choice(np.arange(1, 12), size=rng.integers(2, 6), replace=False)
        records.append(
            {
                "prompt_id": p,
                "split": "heldout",
                "gold": int(rng.integers(0, 3)),
                "test_text": texts[0 if p % 2 else int(rng.integers(0, 12))],
                "demos": [{"text": texts[d], "label": int(rng.integers(0, 3))} for d in demo_ids],
            }
        )
    frame = kernel_regression(records, texts, emb, 3, tau=0.2)
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    for rec, (_, row) in zip(records, frame.iterrows()):
        t = unit[texts.index(rec["test_text"])]
        cos = np.array([unit[texts.index(d["text"])] @ t for d in rec["demos"]])
        labels = np.array([d["label"] for d in rec["demos"]])
        for kernel, w in [("cosine", cos), ("softmax", np.exp(cos / 0.2))]:
            votes = np.array([w[labels == k].sum() for k in range(3)])
            assert row[f"pred_{kernel}"] == votes.argmax()


def test_paper_values_match_by_name_and_alias():
    assert paper_table2_value("icl_accuracy", "sst2") == 0.805
    assert paper_table2_value("encoder:all-MiniLM-L6-v2:cosine", "tweet_eval_offensive") == 0.588
    assert (
        paper_table2_value("encoder:minilm:cosine", "hate", {"minilm": "all-MiniLM-L6-v2", "hate": "tweet_eval_hate"})
        == 0.548
    )
    assert paper_table2_value("encoder:all-MiniLM-L6-v2:softmax", "sst2") is None
    assert paper_table2_value("icl_accuracy", "movie_snippets") is None


def test_table2_selects_planted_head(planted_store, tmp_path):
    ds = open_store(planted_store)
    records = pd.DataFrame(
        {"prompt_id": np.arange(ds.sizes["prompt"]), "split": string_values(ds["split"]), "gold": ds["gold"].values}
    )
    records["pred_cosine"] = records["gold"]
    records["pred_softmax"] = 1 - records["gold"]
    kr_csv = tmp_path / "kr.csv"
    records.to_csv(kr_csv, index=False)
    out = [tmp_path / f"t.{ext}" for ext in ("csv", "md", "tex")]
    frame = table2(
        "synthetic", {"sst2": planted_store}, {("all-MiniLM-L6-v2", "sst2"): kr_csv}, *out, Table2Options(n_boot=200)
    )
    layer, head = Planted().label_head
    assert set(frame["head"].dropna()) == {f"L{layer}H{head}"}  # one head format in every CSV (kicl.store.heads)
    got = frame.set_index("row")
    assert got.loc["recon_agreement", "value"] == 1.0
    assert got.loc["encoder:all-MiniLM-L6-v2:cosine", "value"] == 1.0
    assert got.loc["encoder:all-MiniLM-L6-v2:softmax", "value"] == 0.0
    assert got.loc["encoder:all-MiniLM-L6-v2:cosine", "paper"] == 0.503
    heldout = string_values(ds["split"]) == "heldout"
    icl = (ds["prediction"].values == ds["gold"].values)[heldout].mean()
    assert got.loc["icl_accuracy", "value"] == pytest.approx(icl)
    assert got.loc["icl_accuracy", "ci_low"] <= icl <= got.loc["icl_accuracy", "ci_high"]
    md = out[1].read_text()
    assert "0.805" in md and "ICL output reconstruction" in md
    assert r"\begin{tabular}" in out[2].read_text()


def test_missing_store_variable_is_named(tmp_path):
    path = tmp_path / "bad.zarr"
    xr.Dataset({"length": (("prompt",), np.array([3]))}).to_zarr(path, zarr_format=3, consolidated=False)
    with pytest.raises(StoreError, match="kernel_weight"):
        reconstruction_figure(path, tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.csv")


def test_wide_table_has_paper_columns_only_for_the_papers_tasks():
    rows = [
        {"task": task, "row": "icl_accuracy", "value": 0.7, "ci_low": 0.6, "ci_high": 0.8, "n": 300, "paper": paper}
        for task, paper in [("sst2", 0.805), ("trec", np.nan)]
    ]
    wide = wide_table(pd.DataFrame(rows))
    assert list(wide.columns) == ["method", "sst2", "sst2 (paper)", "trec"]
    assert wide.loc[wide["method"] == "ICL accuracy", "sst2 (paper)"].item() == "0.805"
