"""The causal stage: the head ranking, head sets, the run on a tiny model against its forward store, the summary."""

import os

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import make_model_folder, make_prompts

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from kicl.analysis.causal import (  # noqa: E402
    cohen_kappa,
    rank_heads,
    summarise,
    top_vs_random,
    write_head_ranking,
)
from kicl.analysis.stats import two_level_bootstrap  # noqa: E402
from kicl.capture.causal import (  # noqa: E402
    CausalFiles,
    Ranking,
    interventions,
    layer_matched_draw,
    margins,
    read_ranking,
    run_causal_ablation,
)
from kicl.capture.options import CaptureError  # noqa: E402


def _ranking(scores) -> Ranking:
    return Ranking(tuple(rank_heads(scores)), scores.shape, "max", "agreement")


def test_rank_and_random_draws_are_seeded_and_layer_matched():
    rng = np.random.default_rng(0)
    scores = rng.random((6, 5))
    ranked = rank_heads(scores)
    assert ranked[0] == np.unravel_index(scores.argmax(), scores.shape)
    assert len(set(ranked)) == 30
    first = interventions(_ranking(scores), [1, 4, 8], ["zero"], random_draws=3, seed=7)
    again = interventions(_ranking(scores), [1, 4, 8], ["zero"], random_draws=3, seed=7)
    other = interventions(_ranking(scores), [1, 4, 8], ["zero"], random_draws=3, seed=8)
    assert first == again and first != other
    for c in first:
        assert len(c.heads) == c.k == len(set(c.heads))
        if c.ranking == "random":
            top = next(t for t in first if t.ranking == "top" and t.k == c.k)
            assert not set(c.heads) & set(top.heads), "a random draw reuses a top-k head"
            if c.off_layer == 0:
                assert sorted(layer for layer, _ in c.heads) == sorted(layer for layer, _ in top.heads)
    draws = {c.heads for c in first if c.ranking == "random" and c.k == 8}
    assert len(draws) > 1
    with pytest.raises(ValueError, match="causal.k"):
        interventions(_ranking(scores), [16], ["zero"], 1, 0)  # 16 of 30 heads leave no 16 others


def test_random_draws_never_overlap_the_top_set_and_count_off_layer_heads():
    """A layer whose heads are (nearly) all in the top set gives what it has; the rest come from the nearest
    layer, counted as off_layer, and never from the top set."""
    top = [(1, h) for h in range(5)] + [(2, 0), (2, 1), (2, 2), (2, 3)]
    for seed in range(20):
        drawn, off_layer = layer_matched_draw(top, 5, np.random.default_rng(seed), n_layers=4)
        assert not set(drawn) & set(top) and len(set(drawn)) == len(top)
        assert off_layer == 5 + 3  # layer 1 has no other head, layer 2 one
        assert sum(layer == 2 for layer, _ in drawn) >= 1
        assert {layer for layer, _ in drawn} <= {0, 2, 3}
    # ranked scores: the top-9 set of this layout, as interventions() sees it
    scores = np.zeros((4, 5))
    for layer, head in top:
        scores[layer, head] = 1.0
    random = [c for c in interventions(_ranking(scores), [9], ["zero"], 19, 0) if c.ranking == "random"]
    assert len(random) == 19 and all(c.off_layer == 8 for c in random)
    assert all(not set(c.heads) & set(top) for c in random)


def test_cohen_kappa_does_not_reward_majority_heads():
    y_hat = np.array([0] * 8 + [1] * 2)
    majority = np.zeros((10, 1), int)  # always the majority label: agreement 0.8, kappa 0
    informative = y_hat[:, None].copy()
    informative[0] = 1  # agreement 0.9
    kappa = cohen_kappa(np.hstack([majority, informative]), y_hat)
    assert kappa[0] == 0 and 0.7 < kappa[1] < 0.8


def test_margins():
    logits = np.array([[2.0, 1.0, 0.5], [0.0, 3.0, 1.0]])
    np.testing.assert_allclose(margins(logits, np.array([0, 2])), [1.0, -2.0])


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    from kicl.capture.run import run_capture

    root = tmp_path_factory.mktemp("causal")
    manifest = make_model_folder(root / "model", "llama", seed=5)
    meta, prompts = make_prompts(root / "prompts", root / "model", n_prompts=12, demos=(2, 4))
    capture = {"dtype": "float32", "shard_size": 4, "kv_prompts": 0}  # compared with float32 references
    store = run_capture(meta, prompts, manifest, root / "store.zarr", capture)
    return root, manifest, meta, prompts, store


def _files(tiny_store, store, name: str, rank_by: str = "agreement") -> CausalFiles:
    """The causal stage's files on ``store``, its head ranking written first (the causal_ranking rule)."""
    root, manifest, meta, prompts, _ = tiny_store
    ranking = root / f"{name}_ranking.csv"
    write_head_ranking(store, ranking, "max", rank_by)
    return CausalFiles(meta, prompts, manifest, store, ranking, root / f"{name}_p.csv", root / f"{name}_h.csv")


def test_run_causal_ablation_against_the_store(tiny_store):
    import xarray as xr

    root, manifest, meta, prompts, store = tiny_store
    causal = {"k": [1, 3], "modes": ["zero", "mean", "knockout"], "random_draws": 2, "batch_size": 3}
    files = _files(tiny_store, store, "run")
    frame = run_causal_ablation(files, causal=causal)
    ds = xr.open_zarr(store)
    from kicl.store.reader import string_values

    heldout = np.flatnonzero(string_values(ds["split"]) == "heldout")
    none = frame[frame["mode"] == "none"]
    assert none["prompt"].tolist() == heldout.tolist() and none["flipped"].sum() == 0
    np.testing.assert_array_equal(none["correct"], ds["prediction"].values[heldout] == ds["gold"].values[heldout])
    n_conditions = 3 * 2 * (2 + 2)
    assert len(frame) == len(heldout) * (1 + n_conditions)
    assert (frame.loc[frame["mode"] != "none", "margin_change"].abs() > 1e-6).any()
    heads = pd.read_csv(files.heads_csv)
    assert heads["no_ablation_max_abs_diff"].iloc[0] < 1e-3
    summary = summarise(pd.read_csv(files.prompts_csv), n_boot=50)
    assert set(summary["ranking"]) == {"none", "top", "random", "bottom"}
    row = summary[(summary.ranking == "none")].iloc[0]
    assert row["flip_share"] == 0 and row["accuracy_lo"] <= row["accuracy"] <= row["accuracy_hi"]
    assert set(top_vs_random(summary).columns) >= {"mode", "k", "accuracy_rank_p", "accuracy_vs_random_lo"}
    assert (frame.loc[frame["ranking"] == "random", "off_layer"] >= 0).all()


def test_no_ablation_in_the_forward_batches_reproduces_store_logits_exactly(tiny_store):
    """The session with an intervention handler that selects no head, on the forward pass's own batches."""
    import xarray as xr
    from transformers import AutoModelForCausalLM

    from kicl.capture.handlers import HeadAblation
    from kicl.capture.session import CaptureSession
    from kicl.prompts.files import read_prompt_set

    root, manifest, meta_path, prompts_path, store = tiny_store
    meta, prompts = read_prompt_set(meta_path, prompts_path)
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


def _planted_store(store, path, select_head, heldout_head):
    """A copy of ``store`` whose kernel weights make ``select_head`` the perfect reconstructor of ŷ on the
    select prompts and ``heldout_head`` the perfect one on the held-out prompts (each the worst on the other
    split): a ranking that looks at held-out prompts picks ``heldout_head`` first."""
    import xarray as xr

    from kicl.store.reader import string_values

    ds = xr.open_zarr(store).load()
    split = string_values(ds["split"])
    labels, pred = ds["demo_label"].values, ds["prediction"].values
    match = (labels == pred[:, None]).astype(np.float32)
    weights = np.full(ds["kernel_weight"].shape, 0.01, np.float32)
    for rows, good, bad in (
        (split == "select", select_head, heldout_head),
        (split == "heldout", heldout_head, select_head),
    ):
        weights[rows, :, good[0], good[1], :] = match[rows][:, None, :]
        weights[rows, :, bad[0], bad[1], :] = 1 - match[rows][:, None, :]
    ds["kernel_weight"].values[:] = weights
    for variable in ds.variables.values():
        variable.encoding.clear()
    ds.to_zarr(path, mode="w")
    return path


def test_the_causal_ranking_uses_select_prompts_only(tiny_store):
    """Planted: head L0H1 reconstructs ŷ perfectly on the select prompts, L2H3 on the held-out ones. The
    top-1 set must be L0H1 (a ranking on held-out prompts, the leak, would give L2H3), for both scores; the
    ablation takes its heads from the ranking file it is given."""
    root, manifest, meta, prompts, store = tiny_store
    planted = _planted_store(store, root / "planted.zarr", (0, 1), (2, 3))
    for rank_by in ("agreement", "kappa"):
        files = _files(tiny_store, planted, f"leak_{rank_by}", rank_by)
        ranking = pd.read_csv(files.ranking)
        assert ranking["head_id"].iloc[0] == "L0H1" and ranking["rank_by"].iloc[0] == rank_by
        run_causal_ablation(files, causal={"k": [1], "modes": ["zero"], "random_draws": 2})
        heads = pd.read_csv(files.heads_csv)
        assert heads.loc[heads.ranking == "top", "heads"].tolist() == ["L0H1"], rank_by
        assert heads.loc[heads.ranking == "bottom", "heads"].tolist() != ["L0H1"]
        assert set(heads["rank_by"]) == {rank_by}


def test_the_ablation_follows_the_ranking_file_and_refuses_a_bad_one(tiny_store):
    """The heads come as data: a ranking that puts L2H3 first makes L2H3 the top-1 set; a ranking missing a
    head, or one of another model's shape, is refused naming the file."""
    root, manifest, meta, prompts, store = tiny_store
    files = _files(tiny_store, store, "given")
    ranking = pd.read_csv(files.ranking)
    first = ranking.index[ranking["head_id"] == "L2H3"][0]
    ranking.loc[first, "rank"] = 0
    ranking.to_csv(files.ranking, index=False)
    assert read_ranking(files.ranking).heads[0] == (2, 3)
    run_causal_ablation(files, causal={"k": [1], "modes": ["zero"], "random_draws": 1})
    heads = pd.read_csv(files.heads_csv)
    assert heads.loc[heads.ranking == "top", "heads"].tolist() == ["L2H3"]
    ranking.drop(index=first).to_csv(files.ranking, index=False)
    with pytest.raises(CaptureError, match="does not list each of the"):
        read_ranking(files.ranking)
    ranking[ranking["layer"] < 1].to_csv(files.ranking, index=False)
    with pytest.raises(CaptureError, match="head ranking .* has"):
        run_causal_ablation(files, causal={"k": [1], "modes": ["zero"], "random_draws": 1})


def _planted_frame(top_effect: float, draw_effects, n_prompts: int = 60, seed: int = 0) -> pd.DataFrame:
    """A per-prompt ablation table: no ablation always correct; the top set wrong on a share ``top_effect`` of
    the prompts, random draw r on a share ``draw_effects[r]`` (other prompts per draw)."""
    rng = np.random.default_rng(seed)
    rows = [dict(mode="zero", ranking="none", k=0, draw=0, prompt=p, correct=1, flipped=0, margin_change=0.0)
            for p in range(n_prompts)]  # fmt: skip
    sets = [("top", 0, top_effect)] + [("random", r, e) for r, e in enumerate(draw_effects)]
    for ranking, draw, share in sets:
        wrong = set(rng.choice(n_prompts, size=int(round(share * n_prompts)), replace=False).tolist())
        rows += [dict(mode="zero", ranking=ranking, k=2, draw=draw, prompt=p, correct=int(p not in wrong),
                      flipped=int(p in wrong), margin_change=-2.0 * (p in wrong))
                 for p in range(n_prompts)]  # fmt: skip
    return pd.DataFrame(rows)


def test_rank_p_and_two_level_interval_on_planted_draws():
    """19 draws: a top set more harmful than every draw has p = 1/20; one in the middle of the draws has
    p near 1/2; the two-level interval of top - random covers the planted difference and widens when the
    draws disagree (between-draw variance) though their mean is the same."""
    spread = list(np.linspace(0.0, 0.2, 19))
    strong = summarise(_planted_frame(0.5, spread), n_boot=400)
    top = strong[strong.ranking == "top"].iloc[0]
    assert top["accuracy_rank_p"] == pytest.approx(1 / 20) and top["flip_share_rank_p"] == pytest.approx(1 / 20)
    assert top["accuracy_vs_random"] == pytest.approx(-0.4, abs=0.02)
    assert top["accuracy_vs_random_lo"] < -0.4 < top["accuracy_vs_random_hi"] < 0
    assert top["random_draws"] == 19
    middle = summarise(_planted_frame(0.1, spread), n_boot=400)
    assert 0.4 <= middle.loc[middle.ranking == "top", "accuracy_rank_p"].iloc[0] <= 0.65
    width = {}
    for name, draws in (("alike", [0.3] * 19), ("spread", list(np.linspace(0.0, 0.6, 19)))):
        table = top_vs_random(summarise(_planted_frame(0.3, draws, n_prompts=200), n_boot=400))
        width[name] = float(table["accuracy_vs_random_hi"].iloc[0] - table["accuracy_vs_random_lo"].iloc[0])
    assert width["spread"] > 1.2 * width["alike"]
    # flip share without any flip: a Wilson interval, not [0, 0]
    none = strong[strong.ranking == "none"].iloc[0]
    assert none["flip_share"] == 0 and none["flip_share_hi"] > 0.03


def test_two_level_bootstrap_resamples_draws_and_prompts():
    per_draw = np.array([[0.0] * 10, [1.0] * 10])  # the draws differ, the prompts do not
    means, _ = two_level_bootstrap(per_draw, n_boot=500, seed=0)
    assert means.std() > 0.2  # draws resampled
    per_draw = np.tile(np.arange(10.0), (3, 1))  # the prompts differ, the draws do not
    means, paired = two_level_bootstrap(per_draw, n_boot=500, seed=0, paired=np.arange(10.0))
    np.testing.assert_allclose(means, paired)  # the same prompt resamples for both
    assert means.std() > 0.3
    with pytest.raises(ValueError, match="one value per prompt"):
        two_level_bootstrap(per_draw, paired=np.arange(3.0))


def test_causal_options_come_from_the_schema_with_every_problem_at_once():
    from kicl.capture.causal import CausalOptions
    from kicl.config import ConfigError

    options = CausalOptions.from_config({"causal": {"k": [2]}})
    assert options.k == (2,) and options.modes == ("zero", "mean", "knockout") and options.rank_by == "agreement"
    with pytest.raises(ConfigError) as error:
        CausalOptions.from_config({"causal": {"modes": ["zap"], "k": [0], "pooling": "median"}})
    assert [line.split(":")[0] for line in error.value.problems] == [
        "config key causal.k[0]",
        "config key causal.modes[0]",
        "config key causal.pooling",
    ]
