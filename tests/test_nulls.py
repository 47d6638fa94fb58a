"""Nulls that keep what is not the kernel: planted heads that a null must not call a kernel, and p-value sizes.

Fig 3: a position-only head vs the position-keeping null; Fig 4: an off-centre `pairs` null, a label-match head
and a hub head; Fig 5: the family-wise probe line.
"""

import numpy as np
import pytest

from kicl.analysis.correlation import CorrelationOptions, correlation_stats, demo_hubness, simpred_correlation
from kicl.analysis.probes import probe_accuracy, probe_frame
from kicl.analysis.reconstruction import (
    NullOptions,
    position_null_agreement,
    reconstruction_frame,
    reconstruction_scores,
)
from kicl.analysis.stats import max_t
from kicl.store.pooling import POOLINGS
from kicl.store.reader import open_store
from kicl.store.synthetic import Planted, make_synthetic_store

# ---------------------------------------------------------------- Fig 3: the position-keeping null

P3, D3, L3, H3 = 300, 8, 2, 3
POSITION_HEAD, CONTENT_HEAD = (0, 0), (1, 2)
RECENCY = np.linspace(0.2, 1.0, D3) ** 3  # ICL's own recency: later demonstrations weigh more


def fig3_store(path, content: bool, seed: int = 0):
    """A store whose ŷ is a recency-weighted vote (content=False) or a content-kernel vote (content=True).

    Head POSITION_HEAD always has weights = the recency profile × U(0.8, 1.2) noise (no content); with content,
    head CONTENT_HEAD has weights = the kernel exp(−(z_i − z_test)²) × noise, and labels follow the latent z_i.
    Every other head has uniform random weights. All poolings carry the same weights.
    """
    rng = np.random.default_rng(seed)
    z_demo, z_test = rng.normal(size=(P3, D3)), rng.normal(size=P3)
    kw = rng.uniform(0, 1, (P3, len(POOLINGS), L3, H3, D3))
    kw[:, :, POSITION_HEAD[0], POSITION_HEAD[1]] = (RECENCY * rng.uniform(0.8, 1.2, (P3, D3)))[:, None]
    if content:
        labels = (z_demo + 0.3 * rng.normal(size=(P3, D3)) > 0).astype(int)
        kernel = np.exp(-((z_demo - z_test[:, None]) ** 2))
        score = (kernel * np.where(labels == 1, 1, -1)).sum(1)
        kw[:, :, CONTENT_HEAD[0], CONTENT_HEAD[1]] = (kernel * rng.uniform(0.8, 1.2, (P3, D3)))[:, None]
    else:
        labels = rng.integers(0, 2, (P3, D3))
        score = (RECENCY * np.where(labels == 1, 1, -1)).sum(1) + rng.normal(0, 0.4, P3)
    overrides = {
        "demo_label": labels,
        "prediction": (score > 0).astype(int),
        "kernel_weight": kw.astype(np.float32),
    }
    return make_synthetic_store(
        path,
        n_prompts=P3,
        n_layers=L3,
        n_heads=H3,
        n_demos=D3,
        planted=Planted(label_head=None, simpred_head=None, kv_head=None),
        kv_prompts=0,
        seed=seed,
        overrides=overrides,
    )


def fig3_frame(path):
    ds = open_store(path)
    scores = reconstruction_scores(ds, np.arange(P3), list(POOLINGS), null=NullOptions(n_permutations=99, seed=1))
    return reconstruction_frame(scores)


def head_rows(frame, head):
    return frame[(frame["layer"] == head[0]) & (frame["head"] == head[1])]


def test_fig3_position_only_head_is_not_marked(tmp_path):
    frame = fig3_frame(fig3_store(tmp_path / "position.zarr", content=False))
    rows = head_rows(frame, POSITION_HEAD)
    # it does reproduce ŷ far above chance, and far above the label-permutation null (the audit's M1) ...
    assert (rows["agree_pred"] > 0.8).all()
    assert (rows["agree_pred"] > rows["agree_pred_label_null_q"]).all()
    # ... but the marks and the family-wise p follow the position-keeping null, which it does not beat
    assert not rows["agree_pred_above_null"].any()
    assert (rows["agree_pred_position_p"] > 0.2).all()
    assert not frame["agree_pred_above_null"].any()
    assert frame["agree_pred_position_p_best"].iloc[0] > 0.05


def test_fig3_content_head_is_marked(tmp_path):
    frame = fig3_frame(fig3_store(tmp_path / "content.zarr", content=True))
    rows = head_rows(frame, CONTENT_HEAD)
    assert rows["agree_pred_above_null"].all()
    assert rows["agree_pred_position_p"].tolist() == pytest.approx([1 / 100] * len(POOLINGS))
    assert (rows["agree_pred"] > rows["agree_pred_position_threshold"]).all()
    assert not head_rows(frame, POSITION_HEAD)["agree_pred_above_null"].any()
    # only the content head is marked, in every pooling
    assert frame["agree_pred_above_null"].sum() == len(POOLINGS)


def test_fig3_position_null_size():
    """Content-free heads with position profiles: the max-T p rejects at α = 0.05 in 3–7 % of 600 replications."""
    rng = np.random.default_rng(12)
    n_prompts, n_demos, n_heads, n_perm, reps = 60, 5, 6, 39, 600
    rejections = 0
    for _ in range(reps):
        counts = rng.integers(3, n_demos + 1, n_prompts)
        present = np.arange(n_demos) < counts[:, None]
        labels = np.where(present, rng.integers(0, 2, (n_prompts, n_demos)), -1)
        profiles = rng.uniform(0, 1, (n_heads, n_demos)) ** 3
        kw = np.where(present[:, None], profiles * rng.uniform(0.5, 1.5, (n_prompts, n_heads, n_demos)), np.nan)
        score = (np.where(present, RECENCY[-n_demos:], 0) * np.where(labels == 1, 1, -1)).sum(1)
        yhat = (score + rng.normal(0, 0.4, n_prompts) > 0).astype(int)
        votes = np.einsum("phd,pdk->phk", np.nan_to_num(kw), (labels[..., None] == np.arange(2)).astype(float))
        observed = (votes.argmax(-1) == yhat[:, None]).mean(0)
        null = position_null_agreement(kw, labels, {"y": yhat}, 2, n_perm, seed=int(rng.integers(1 << 30)))["y"]
        rejections += np.nanmin(max_t(observed, null)["p_max"]) <= 0.05
    assert 0.03 <= rejections / reps <= 0.07


# ---------------------------------------------------------------- Fig 4: centred `pairs` null, label and hub heads


def test_fig4_pairs_p_is_centred_on_an_off_centre_null():
    """A prompt-level offset shared by a_i and sim_pred puts the `pairs` null far from 0; a strong NEGATIVE
    within-prompt link sits below that null (r still > 0) and must get a small p, the no-link head must not."""
    rng = np.random.default_rng(0)
    n_prompts, n_demos = 200, 8
    valid = np.ones((n_prompts, n_demos), bool)
    length = rng.integers(3, 12, (n_prompts, n_demos)).astype(float)
    scale = rng.normal(size=(n_prompts, 1))
    y = scale + 0.5 * rng.normal(size=(n_prompts, n_demos))
    negative = scale - 0.6 * (y - y.mean(1, keepdims=True)) + 0.3 * rng.normal(size=(n_prompts, n_demos))
    no_link = scale + 0.5 * rng.normal(size=(n_prompts, n_demos))
    x = np.stack([negative, no_link], -1)
    out = correlation_stats(
        x, y, length, valid, CorrelationOptions(unit="pairs", n_permutations=199, n_boot=20, seed=1)
    )
    assert out["r"][0] > 0.5 and out["r_null_low"][0] > out["r"][0]  # positive r, yet below its null
    assert out["r_p"][0] < 0.01 and out["r_p_max"][0] < 0.01
    assert out["r_p"][1] > 0.05 and out["r_p_max"][1] > 0.05
    assert out["r_null_centre"][0] > 0.7


def fig4_store(path, kernel_weight, sim, labels, prediction, demo_text, seed=0, hubness=None):
    n_prompts, n_demos = sim.shape
    extra = {} if hubness is None else {"demo_hubness": hubness.astype(np.float32)}
    kw = np.broadcast_to(kernel_weight[:, None], (n_prompts, len(POOLINGS)) + kernel_weight.shape[1:])
    return make_synthetic_store(
        path,
        n_prompts=n_prompts,
        n_layers=kernel_weight.shape[1],
        n_heads=kernel_weight.shape[2],
        n_demos=n_demos,
        planted=Planted(label_head=None, simpred_head=None, kv_head=None),
        kv_prompts=0,
        seed=seed,
        overrides={
            "kernel_weight": kw.astype(np.float32),
            "sim_pred": sim.astype(np.float32),
            "demo_label": labels,
            "prediction": prediction,
            "demo_text": demo_text,
            **extra,
        },
    )


def fig4_head(path, head, attrs=()):
    ds = open_store(path)
    result = simpred_correlation(
        ds, np.arange(ds.sizes["prompt"]), ["max"], CorrelationOptions("centred", n_permutations=99, n_boot=20)
    )
    out = {key: float(result[key].sel(pooling="max").values[head]) for key in ("r", "partial_r", "partial_r_p_max")}
    return out | {key: result.attrs[key] for key in attrs}


def hub_inputs(rng, n_texts, vocab=200):
    """P(o|x) of `n_texts` inputs: a shared Zipf background (share w ~ Beta(2, 2)) plus a sparse specific part."""
    background = 1 / np.arange(1, vocab + 1) ** 1.1
    background /= background.sum()
    share = rng.beta(2, 2, n_texts)
    specific = rng.dirichlet(np.full(vocab, 0.05), n_texts)
    return share[:, None] * background + (1 - share[:, None]) * specific, share


def test_fig4_label_match_head_has_no_significant_partial_r(tmp_path):
    """Weights = 1[y_i = ŷ] + noise, no dependence on x: a large r, but no partial r once 1[y_i = ŷ] is partialled;
    a head whose weights follow the input similarity keeps its partial r."""
    rng = np.random.default_rng(0)
    n_prompts, n_demos = 300, 8
    z_test, z_demo = rng.normal(size=(n_prompts, 1)), rng.normal(size=(n_prompts, n_demos))
    labels, prediction = (z_demo > 0).astype(int), (z_test[:, 0] > 0).astype(int)
    sim = -np.abs(z_demo - z_test) + 0.3 * rng.normal(size=(n_prompts, n_demos))
    kw = rng.uniform(0, 1, (n_prompts, 2, 2, n_demos))
    kw[:, 0, 0] = (labels == prediction[:, None]) + 0.3 * rng.normal(size=(n_prompts, n_demos))
    kw[:, 1, 1] = -np.abs(z_demo - z_test) + 0.3 * rng.normal(size=(n_prompts, n_demos))
    text = np.char.add("text ", np.arange(n_prompts * n_demos).astype(str)).reshape(n_prompts, n_demos)
    path = fig4_store(tmp_path / "label.zarr", kw, sim, labels, prediction, text)
    label_head = fig4_head(path, (0, 0))
    assert label_head["r"] > 0.3  # the plain r is fooled
    assert abs(label_head["partial_r"]) < 0.1 and label_head["partial_r_p_max"] > 0.05
    kernel_head = fig4_head(path, (1, 1))
    assert kernel_head["partial_r"] > 0.3 and kernel_head["partial_r_p_max"] < 0.05


def test_fig4_hub_head_has_no_significant_partial_r(tmp_path):
    """sim_pred = P(o|x_test)ᵀP(o|x_i) with a shared Zipf background: a head that attends by the demonstration's
    background share (a demo-only property, no test dependence) gets a large r but no partial r once the
    demonstration's hubness (its mean sim_pred with other prompts' test inputs) is partialled; a pool of 40 inputs,
    so that each recurs in about 60 prompts (the store-based hubness needs that support)."""
    rng = np.random.default_rng(0)
    n_prompts, n_demos, n_pool, vocab = 300, 8, 40, 200
    background = 1 / np.arange(1, vocab + 1) ** 1.1
    background /= background.sum()

    def dist(share):
        return share[:, None] * background + (1 - share[:, None]) * rng.dirichlet(np.full(vocab, 0.05), len(share))

    w_pool = rng.beta(2, 2, n_pool)
    p_pool, p_test = dist(w_pool), dist(rng.beta(2, 2, n_prompts))
    rows = np.stack([rng.choice(n_pool, n_demos, replace=False) for _ in range(n_prompts)])
    sim = np.einsum("pv,pdv->pd", p_test, p_pool[rows])
    kw = rng.uniform(0, 1, (n_prompts, 2, 2, n_demos))
    kw[:, 0, 0] = w_pool[rows] + 0.15 * rng.normal(size=(n_prompts, n_demos))
    kw[:, 1, 1] = sim / sim.std() + 0.5 * rng.normal(size=(n_prompts, n_demos))
    labels = rng.integers(0, 2, (n_prompts, n_demos))
    text = np.char.add("pool text ", rows.astype(str))
    path = fig4_store(tmp_path / "hub.zarr", kw, sim, labels, rng.integers(0, 2, n_prompts), text)
    hub_head = fig4_head(path, (0, 0))
    assert hub_head["r"] > 0.3  # the plain r is fooled
    assert abs(hub_head["partial_r"]) < 0.1 and hub_head["partial_r_p_max"] > 0.05
    kernel_head = fig4_head(path, (1, 1))
    assert kernel_head["partial_r"] > 0.2 and kernel_head["partial_r_p_max"] < 0.05


def test_fig4_stored_hubness_removes_a_hub_head_without_recurring_demonstrations(tmp_path):
    """Every (prompt, demonstration) shows a different input, so the store estimate of hubness has no support; the
    capture's exact demo_hubness (mean P(o|x_test_q)ᵀP(o|x_i) over the other prompts) still takes the hub head (weights
    = the input's background share + noise, no test dependence) to no significant partial r, and a head that follows
    sim_pred keeps its partial r. Without the stored value the hub head stays 'significant'."""
    rng = np.random.default_rng(1)
    n_prompts, n_demos = 300, 8
    p_demo, share = hub_inputs(rng, n_prompts * n_demos)
    p_demo, share = p_demo.reshape(n_prompts, n_demos, -1), share.reshape(n_prompts, n_demos)
    p_test, _ = hub_inputs(rng, n_prompts)
    sim = np.einsum("pv,pdv->pd", p_test, p_demo)
    others = (p_test.sum(0) - p_test) / (n_prompts - 1)
    hubness = np.einsum("pv,pdv->pd", others, p_demo)
    kw = rng.uniform(0, 1, (n_prompts, 2, 2, n_demos))
    kw[:, 0, 0] = share + 0.15 * rng.normal(size=(n_prompts, n_demos))
    kw[:, 1, 1] = sim / sim.std() + 0.5 * rng.normal(size=(n_prompts, n_demos))
    labels, prediction = rng.integers(0, 2, (n_prompts, n_demos)), rng.integers(0, 2, n_prompts)
    text = np.char.add("unique text ", np.arange(n_prompts * n_demos).astype(str)).reshape(n_prompts, n_demos)
    attrs = ("hubness_source", "hubness_coverage")
    stored = tmp_path / "stored.zarr"
    fig4_store(stored, kw, sim, labels, prediction, text, hubness=hubness)
    hub_head = fig4_head(stored, (0, 0), attrs)
    assert hub_head["hubness_source"] == "stored" and hub_head["hubness_coverage"] == 1.0
    assert hub_head["r"] > 0.3  # the plain r is fooled
    assert abs(hub_head["partial_r"]) < 0.1 and hub_head["partial_r_p_max"] > 0.05
    kernel_head = fig4_head(stored, (1, 1))
    assert kernel_head["partial_r"] > 0.2 and kernel_head["partial_r_p_max"] < 0.05
    # the same pairs without the stored value: no input recurs, so the estimate covers nothing and the hub head wins
    estimated = fig4_head(fig4_store(tmp_path / "estimated.zarr", kw, sim, labels, prediction, text), (0, 0), attrs)
    assert estimated["hubness_source"] == "estimated" and estimated["hubness_coverage"] == 0.0
    assert estimated["partial_r"] > 0.3 and estimated["partial_r_p_max"] < 0.05


def test_demo_hubness_leaves_the_own_prompt_out():
    sim = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, np.nan]])
    keys = np.array([["a", "b"], ["a", "c"], ["a", "b"]])
    hub, support = demo_hubness(sim, keys, np.isfinite(sim))
    np.testing.assert_allclose(hub[0], [(3 + 5) / 2, np.nan])  # b's other copy is missing (NaN sim_pred)
    np.testing.assert_allclose(hub[1], [(1 + 5) / 2, np.nan])
    np.testing.assert_allclose(support, [[2, 0], [2, 0], [2, 0]])


# ---------------------------------------------------------------- Fig 5: the family-wise probe line


def test_fig5_family_wise_line_holds_noise_probes(tmp_path):
    """On noise keys/values, some of the 5 offsets × 4 layers × 4 heads probes beat the pooled per-probe 95% line
    (as ~5% should); none beats the family-wise line (max over probes per shuffle, then the 95% quantile)."""
    path = make_synthetic_store(
        tmp_path / "noise.zarr",
        n_prompts=120,
        n_layers=4,
        n_heads=4,
        planted=Planted(label_head=None, simpred_head=None, kv_head=None),
        seed=3,
    )
    ds = open_store(path)
    rows = np.random.default_rng(0).integers(0, 150, ds["demo_label"].shape)
    ds = ds.assign(demo_text=(("prompt", "demo"), np.char.add("pool text ", rows.astype(str))))
    result = probe_accuracy(ds, "values", 0.01, 0.3, seed=1, n_null=39)
    acc = result["accuracy"].values
    assert (acc > result.attrs["null_q95"]).sum() >= 1
    assert result.attrs["null_fw_q95"] > result.attrs["null_q95"]
    assert (acc > result.attrs["null_fw_q95"]).sum() == 0
    frame = probe_frame(result)
    assert "null_fw_q95" in frame and frame["null_fw_q95"].nunique() == 1
