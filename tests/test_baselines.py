"""Attention-free baselines, the Fig 3 permutation null, head selection on select / scoring on heldout, verdicts."""

import json
import pkgutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import kicl.analysis
from kicl.analysis.baselines import (
    classification_scores,
    fixed_predictions,
    last_demo_label,
    majority,
    position_kernel,
    position_predictions,
)
from kicl.analysis.head_selection import head_ranking, nested_bootstrap, selection_data
from kicl.analysis.reconstruction import NullOptions, label_permutation_null, reconstruction_scores
from kicl.analysis.stats import bootstrap_p
from kicl.analysis.votes import permute_within_prompts
from kicl.store.reader import open_store
from kicl.store.synthetic import Planted, make_synthetic_store

# ---------------------------------------------------------------- analysis stays plot-free


def test_analysis_modules_do_not_import_matplotlib():
    names = [f"kicl.analysis.{m.name}" for m in pkgutil.iter_modules(kicl.analysis.__path__)]
    code = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib' or m.startswith('kicl.figures'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"kicl.analysis pulls in {out}"


# ---------------------------------------------------------------- baselines against hand-computed values

# 4 prompts, 3 demonstration slots, 3 labels; slot 2 of prompt 3 is missing
LABELS = np.array([[0, 1, 1], [2, 2, 0], [1, 0, 2], [0, 1, -1]])


def test_fixed_baselines_by_hand():
    got = fixed_predictions(LABELS, 3, select_prediction=[2, 2, 1, 0], select_gold=[1, 1, 0, 0])
    assert got["constant"].tolist() == [2, 2, 2, 2]
    assert got["gold_majority"].tolist() == [0, 0, 0, 0]  # tie 0/1 -> lowest label id
    assert got["vote"].tolist() == [1, 2, 0, 0]  # (0,1,2) and (0,1) are ties -> lowest
    assert got["recency"].tolist() == [1, 0, 2, 1]  # the last present demonstration
    recent = fixed_predictions(LABELS, 3, select_prediction=[0], select_gold=[0], ties="recent")
    assert recent["vote"].tolist() == [1, 2, 2, 1]  # ties -> the tied label that occurs latest


def test_majority_and_last_label_edge_cases():
    assert majority([1, 1, 0, 0, 2], 3) == 0
    with pytest.raises(ValueError, match="n_select"):
        majority([], 2)
    assert last_demo_label(np.array([[-1, -1], [1, -1]])).tolist() == [-1, 1]


def test_position_kernel_by_hand():
    kw = np.array([[0.1, 0.2, 0.7], [0.3, 0.4, np.nan]])  # (P, D): one head
    weights = position_kernel(kw)
    np.testing.assert_allclose(weights, [0.2, 0.3, 0.7])
    # prompt (0, 1, 1): votes 0.2 for 0, 1.0 for 1; prompt (2, 2, 0): 0.5 for 2, 0.7 for 0
    assert position_predictions(weights, LABELS[:2], 3).tolist() == [1, 0]


def test_classification_scores_by_hand():
    pred, ref = np.array([0, 0, 0, 1]), np.array([0, 0, 1, 1])
    got = classification_scores(pred, ref, 2)
    assert got["accuracy"] == 0.75
    assert got["balanced_accuracy"] == pytest.approx((1.0 + 0.5) / 2)
    assert got["macro_f1"] == pytest.approx((2 * 2 / (2 + 3) + 2 * 1 / (2 + 1)) / 2)
    constant = classification_scores(np.zeros(4, int), np.array([0, 0, 0, 1]), 3)
    assert constant["balanced_accuracy"] == 0.5  # class 2 absent from both: not averaged
    assert constant["macro_f1"] == pytest.approx((2 * 3 / 7 + 0) / 2)


def test_permutation_keeps_each_prompts_labels():
    rng = np.random.default_rng(0)
    perm = permute_within_prompts(LABELS, rng)
    assert perm[3, 2] == -1
    for row, new in zip(LABELS, perm):
        assert sorted(row[row >= 0]) == sorted(new[new >= 0])
    many = np.stack([permute_within_prompts(LABELS, rng) for _ in range(300)])
    assert (many[:, 0, 0] == 1).mean() == pytest.approx(2 / 3, abs=0.08)  # the labels really move


# ---------------------------------------------------------------- permutation null


@pytest.fixture(scope="module")
def random_store(tmp_path_factory):
    return make_synthetic_store(
        tmp_path_factory.mktemp("b") / "random.zarr",
        n_prompts=300,
        n_labels=2,
        n_layers=2,
        n_heads=3,
        planted=Planted(label_head=None, simpred_head=None, kv_head=None),
        kv_prompts=0,
        seed=5,
    )


@pytest.fixture(scope="module")
def planted_store(tmp_path_factory):
    return make_synthetic_store(tmp_path_factory.mktemp("b") / "planted.zarr", n_prompts=120, min_demos=4, seed=1)


def test_null_is_at_chance_on_random_attention(random_store):
    ds = open_store(random_store)
    prompts = np.arange(ds.sizes["prompt"])
    null = label_permutation_null(ds, prompts, ["max"], NullOptions(n_permutations=100, seed=1))
    sd = np.sqrt(0.25 / len(prompts))
    # the null maximum over 6 heads sits a little above chance (0.5), well under 0.5 + 4 sd
    assert 0.5 < float(null["agree_pred_label_null_mean"][0]) < 0.5 + 3 * sd
    # on random attention the observed best head is an ordinary draw of that null
    assert float(null["agree_pred_label_p_value"][0]) > 0.05


def test_null_rejects_the_planted_head(planted_store):
    ds = open_store(planted_store)
    scores = reconstruction_scores(ds, np.arange(ds.sizes["prompt"]), ["max"], null=NullOptions(n_permutations=50))
    assert float(scores["agree_pred_label_p_value"][0]) == pytest.approx(1 / 51)
    lay, head = Planted().label_head
    assert scores["agree_pred"].values[0, lay, head] > float(scores["agree_pred_label_null_q"][0])
    # the vote baseline is what the null keeps: label counts survive the permutation
    vote = float(scores["baseline_agree_pred"].sel(baseline="vote"))
    assert abs(float(scores["agree_pred_label_null_mean"][0]) - vote) < 0.15


# ---------------------------------------------------------------- selection on select, scoring on heldout


def two_head_store(path, n=80, seed=0):
    """Head (0, 0) reproduces ŷ on select prompts only, head (1, 1) on heldout prompts only."""
    rng = np.random.default_rng(seed)
    n_demos, n_labels = 4, 2
    demo_label = np.tile([0, 1, 0, 1], (n, 1))
    prediction = rng.integers(0, n_labels, n)
    split = np.array(["select"] * (n // 2) + ["heldout"] * (n - n // 2), dtype=object)
    kw = rng.uniform(0.0, 0.2, (n, 1, 2, 2, n_demos))  # pooling, layer, head

    def aim(layer, head, rows, at_prediction):
        target = prediction if at_prediction else 1 - prediction
        for p in rows:
            kw[p, 0, layer, head, :] = 0.0
            kw[p, 0, layer, head, target[p]] = 1.0  # demo slot k carries label k

    sel, held = np.flatnonzero(split == "select"), np.flatnonzero(split == "heldout")
    aim(0, 0, sel, True)
    aim(0, 0, held, False)
    aim(1, 1, sel, False)
    aim(1, 1, held, True)
    ds = xr.Dataset(
        {
            "split": (("prompt",), split),
            "gold": (("prompt",), rng.integers(0, n_labels, n)),
            "prediction": (("prompt",), prediction),
            "label_logits": (("prompt", "label"), np.zeros((n, n_labels), np.float32)),
            "demo_label": (("prompt", "demo"), demo_label),
            "kernel_weight": (("prompt", "pooling", "layer", "head", "demo"), kw.astype(np.float32)),
        },
        coords={"pooling": np.array(["max"], dtype=object)},
        attrs={"label_names": ["a", "b"]},
    )
    ds.to_zarr(path, zarr_format=3, consolidated=False)
    return path


def test_selection_uses_select_and_scores_heldout(tmp_path):
    store = two_head_store(tmp_path / "two.zarr")
    ranking = head_ranking(store, "max")
    top = ranking.iloc[0]
    assert (top["layer"], top["head"]) == (0, 0)
    assert top["select_agreement"] == 1.0 and top["heldout_agreement"] == 0.0
    other = ranking.query("layer == 1 and head == 1").iloc[0]
    assert other["heldout_agreement"] == 1.0 and other["rank"] == len(ranking)
    res = nested_bootstrap(selection_data(open_store(store), "max"), n_boot=200, seed=0, level=0.95)
    assert res["head"] == (0, 0)
    assert res["scores"][("head", "prediction")][0] == 0.0  # scored on heldout, where it always disagrees
    assert res["stability"] == 1.0


def test_nested_bootstrap_on_planted_store(planted_store):
    data = selection_data(open_store(planted_store), "max")
    res = nested_bootstrap(data, n_boot=300, seed=0, level=0.95)
    assert res["head"] == Planted().label_head
    value, low, high = res["scores"][("head", "prediction")]
    assert value == 1.0
    for name in ("constant", "vote", "recency", "position"):
        delta, lo, hi, p = res["diffs"][(name, "prediction")]
        assert lo > 0 and p < 0.02, name
        assert delta == pytest.approx(value - res["scores"][(name, "prediction")][0])
    held = data.held_pred
    assert res["scores"][("constant", "prediction")][0] == pytest.approx(
        (held == np.bincount(data.sel_pred, minlength=2).argmax()).mean()
    )


def test_bootstrap_p():
    assert bootstrap_p(np.full(99, 0.1)) == pytest.approx(2 / 100)
    assert bootstrap_p(np.r_[np.full(50, -0.1), np.full(50, 0.1)]) == 1.0


def test_summary_shows_thumbnails_next_to_numbers(planted_store, tmp_path):
    from kicl.analysis.decision import DecisionRule
    from kicl.config import defaults_for
    from kicl.figures.fig3_reconstruction import ReconstructionOptions, reconstruction_figure
    from kicl.tables.table2 import Table2Options, table2
    from kicl.tables.verdict import VerdictInputs, write_verdict
    from kicl.workflow.summary import write_summary

    fig = tmp_path / "results/figures/m/t/paper"
    tab = tmp_path / "results/tables/m/paper"
    fig.mkdir(parents=True)
    tab.mkdir(parents=True)
    figs = [fig / "fig3a.png", fig / "fig3b.png", fig / "fig3_reconstruction.csv"]
    reconstruction_figure(
        planted_store, *figs, ReconstructionOptions(pools=["max"], null=NullOptions(n_permutations=20)), title="t"
    )
    table2(
        "m",
        {"t": planted_store},
        {},
        tab / "table2.csv",
        tab / "table2.md",
        tab / "table2.tex",
        Table2Options(n_boot=50),
    )
    out = {"csv": tab / "verdict.csv", "md": tab / "verdict.md", "heads": tab / "verdict_heads.csv"}
    rule = DecisionRule.from_config({**defaults_for("analysis")["decision"], "n_boot": 50, "inner_folds": 2})
    check = {"candidate": "bfloat16", "chosen": "bfloat16", "prompts": 16, "prediction_agreement": 1.0}
    check |= {"max_kernel_diff": 0.042, "mean_kernel_diff": 0.0007, "max_label_logit_diff": 0.46}
    (tab / "dtype.json").write_text(json.dumps(check))
    inputs = VerdictInputs({"t": planted_store}, {}, tab / "dtype.json")
    write_verdict("m", "paper", inputs, rule, "max", "fitted", out)
    assert "largest |Δ kernel weight| 0.042" in (tab / "verdict.md").read_text()
    entries = [
        {"what": "Fig 3", "rule": "fig3_reconstruction", "files": [str(f) for f in figs]},
        {"what": "Verdict", "rule": "verdict", "files": [str(tab / "verdict.csv"), str(tab / "verdict.md")]},
    ]
    write_summary(entries, tmp_path / "s.html", tmp_path / "s.md", benchmark_dir=tmp_path / "none")
    page = (tmp_path / "s.html").read_text()
    assert page.count("data:image/png;base64,") == 2
    assert "best L1H2 1.000" in page and "position-keeping null: threshold" in page
    line = pd.read_csv(tab / "verdict.csv")["verdict"].iloc[0]
    assert line.startswith("undecided — open: label invariance (no label-flip partner)")  # the planted head wins
    assert line in page and line in (tmp_path / "s.md").read_text()


def test_prompt_file_baselines_by_hand():
    from kicl.analysis.baselines import prompt_file_baselines

    def rec(split, gold, labels):
        return {"split": split, "gold": gold, "demos": [{"label": lab} for lab in labels]}

    records = [
        rec("select", 1, [0]),
        rec("select", 1, [1]),
        rec("select", 0, [0]),
        rec("heldout", 1, [0, 1, 1]),
        rec("heldout", 0, [0, 0, 1]),
        rec("heldout", 0, [1, 1]),
    ]
    got = {r["baseline"]: r for r in prompt_file_baselines(records, 2)}
    assert got["gold_majority"]["accuracy"] == pytest.approx(1 / 3)  # select majority 1
    assert got["vote"]["accuracy"] == pytest.approx(2 / 3)  # votes 1, 0, 1
    assert got["recency"]["accuracy"] == pytest.approx(1 / 3)  # last labels 1, 1, 1
    assert got["vote"]["n"] == 3


def test_a_content_free_head_no_longer_beats_the_vote_on_ties():
    """science-audit-2 H1: ŷ follows the shown majority and says label 1 on 75% of 4-4 ties. With ties going to
    label id 0 a head with no content and no position signal beat the vote; with the fitted tie rule it does not."""
    from kicl.analysis.head_selection import SelectionData
    from kicl.analysis.votes import reconstruct, resolve_ties

    rng = np.random.default_rng(0)

    def split(n):
        labels = rng.integers(0, 2, (n, 8))
        ones = labels.sum(1)
        pred = np.where(ones == 4, (rng.random(n) < 0.75).astype(int), (ones > 4).astype(int))
        kw = rng.uniform(0.5, 1.5, (n, 1, 8))
        return labels, pred, kw, reconstruct(kw, labels, 2, "lowest")

    (_, sp, skw, syt), (hl, hp, _, hyt) = split(1500), split(1500)
    for ties, beats in (("lowest", True), ("fitted", False)):
        data = SelectionData(2, 1, syt, sp, sp, skw, hyt, hp, hp, hl, np.arange(1500), resolve_ties(ties, sp, 2))
        delta, low, high, _ = nested_bootstrap(data, n_boot=300, seed=0, level=0.95, nested=False)["diffs"][
            ("vote", "prediction")
        ]
        assert (low > 0) is beats, (ties, delta, low, high)


def test_nested_bootstrap_repeats_the_choice_between_two_near_equal_heads():
    """Two heads agree with ŷ on 80% and 78% of prompts, independently: the choice is unstable, and the nested
    interval (choice repeated in each resample) is wider than the one conditional on the first choice."""
    from kicl.analysis.head_selection import SelectionData

    rng = np.random.default_rng(5)

    def split(n):
        pred = rng.integers(0, 2, n)
        yt = np.stack([np.where(rng.random(n) < q, pred, 1 - pred) for q in (0.80, 0.78)], 1)
        labels = rng.integers(0, 2, (n, 8))
        return pred, yt, labels

    (sp, syt, _), (hp, hyt, hl) = split(150), split(150)
    kw = rng.random((150, 2, 8))
    data = SelectionData(2, 2, syt, sp, sp, kw, hyt, hp, hp, hl, np.arange(150), np.ones(2))
    nested = nested_bootstrap(data, n_boot=400, seed=0, level=0.95, nested=True)
    fixed = nested_bootstrap(data, n_boot=400, seed=0, level=0.95, nested=False)
    assert 0 < nested["stability"] < 1
    width = lambda res: np.subtract(*res["scores"][("head", "prediction")][2:0:-1])  # noqa: E731
    assert width(nested) > width(fixed)
