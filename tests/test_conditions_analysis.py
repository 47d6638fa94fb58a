"""The conditions stage (kicl.analysis.conditions): conditions of one (model, task) compared on shared test points.

Condition stores are written through the real writer (kicl.store.synthetic) from one seed, so they share test
points, splits, gold labels and demonstrations; a condition differs by overridden ŷ, a planted head elsewhere,
or its prompt records (true labels, similarities).
"""

import json

import numpy as np
import pandas as pd
import pytest

from kicl.analysis.conditions import (
    ConditionError,
    StageOptions,
    compare_conditions,
    condition_inputs,
    ood_type,
    order_group_members,
)
from kicl.analysis.reconstruction import head_predictions
from kicl.analysis.stats import holm, mcnemar_p, wilson_interval
from kicl.store.reader import open_store
from kicl.store.synthetic import Planted, make_synthetic_store, write_synthetic_prompts
from kicl.tables.paper import paper_table1_key

N_PROMPTS, SEED = 40, 3
BOOT = {"n_boot": 200, "seed": 7, "level": 0.9}


def _condition(tmp_path, name, *, planted=None, overrides=None, similarity=None, true_label=None):
    folder = tmp_path / name
    folder.mkdir(parents=True)
    store = make_synthetic_store(
        folder / "store.zarr",
        n_prompts=N_PROMPTS,
        n_layers=2,
        n_heads=3,
        n_demos=4,
        kv_prompts=0,
        select_fraction=0.5,
        planted=planted,
        seed=SEED,
        overrides=overrides,
    )
    write_synthetic_prompts(
        store, folder / "meta.json", folder / "prompts.jsonl", demo_similarity=similarity, true_label=true_label
    )
    return store, folder / "prompts.jsonl"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """The reference store's arrays (every condition shares them unless overridden)."""
    tmp = tmp_path_factory.mktemp("base")
    store, _ = _condition(tmp, "paper")
    ds = open_store(store)
    return {name: ds[name].values.copy() for name in ("prediction", "gold", "split", "demo_label", "test_index")}


def _run(tmp_path, specs, reference="paper", task="synthetic", **kwargs):
    stores, prompts, protocols = {}, {}, {}
    for name, (protocol, options) in specs.items():
        stores[name], prompts[name] = _condition(tmp_path, name, **options)
        protocols[name] = protocol
    return compare_conditions(
        condition_inputs(stores, prompts, protocols), reference, task, StageOptions(bootstrap=BOOT, **kwargs)
    )


def _changed(prediction, rows, n_labels=2):
    out = prediction.copy()
    out[rows] = (out[rows] + 1) % n_labels
    return out


def test_paired_difference_and_change_rate_by_hand(tmp_path, base):
    rows = np.array([0, 3, 5, 8, 13, 21, 34])
    pred_b = _changed(base["prediction"], rows)
    result = _run(
        tmp_path, {"paper": ({}, {}), "nearest": ({"demo_strategy": "nearest"}, {"overrides": {"prediction": pred_b}})}
    )
    metrics = result.metrics.set_index("condition")
    correct_a = (base["prediction"] == base["gold"]).astype(float)
    correct_b = (pred_b == base["gold"]).astype(float)
    row = metrics.loc["nearest"]
    assert row["accuracy"] == pytest.approx(correct_b.mean())
    assert row["accuracy_diff"] == pytest.approx(correct_b.mean() - correct_a.mean())
    # the same resample of test points applied to both conditions (seeded as documented)
    idx = np.random.default_rng(BOOT["seed"]).integers(0, N_PROMPTS, (BOOT["n_boot"], N_PROMPTS))
    diffs = (correct_b - correct_a)[idx].mean(1)
    assert row["accuracy_diff_low"] == pytest.approx(np.quantile(diffs, 0.05))
    assert row["accuracy_diff_high"] == pytest.approx(np.quantile(diffs, 0.95))
    assert row["accuracy_diff_p"] == pytest.approx(mcnemar_p(correct_b, correct_a))  # nothing re-selected: exact
    assert row["accuracy_diff_p_holm"] == row["accuracy_diff_p"]  # one condition against the reference
    assert row["yhat_change"] == pytest.approx(len(rows) / N_PROMPTS)
    assert (row["yhat_change_low"], row["yhat_change_high"]) == pytest.approx(
        wilson_interval(len(rows), N_PROMPTS, BOOT["level"])
    )
    assert metrics.loc["paper", "yhat_change"] == 0 and metrics.loc["paper", "accuracy_diff"] == 0
    assert row["differs_from_reference"] == 'demo_strategy="nearest"'
    assert row["n"] == N_PROMPTS and row["n_heldout"] == (base["split"] == "heldout").sum()


def test_heldout_only_points(tmp_path, base):
    rows = np.flatnonzero(base["split"] == "select")[:4]  # changes on select points only
    pred_b = _changed(base["prediction"], rows)
    result = _run(
        tmp_path, {"paper": ({}, {}), "b": ({"x": 1}, {"overrides": {"prediction": pred_b}})}, points="heldout"
    )
    row = result.metrics.set_index("condition").loc["b"]
    assert row["yhat_change"] == 0 and row["n"] == (base["split"] == "heldout").sum()


def test_order_groups(tmp_path, base):
    planted_rows = np.array([1, 2, 9, 30])
    specs = {
        "paper": ({"demo_strategy": "random"}, {}),
        "perm1": ({"demo_strategy": "random", "order_seed": 1}, {}),
        "perm2": ({"demo_strategy": "random", "order_seed": 2}, {}),
        "near": ({"demo_strategy": "nearest"}, {}),
        "near_asc": (
            {"demo_strategy": "nearest", "demo_order": "ascending"},
            {"overrides": {"prediction": _changed(base["prediction"], planted_rows)}},
        ),
    }
    result = _run(tmp_path, specs)
    order = result.order
    assert list(order["members"]) == ["paper, perm1, perm2", "near, near_asc"]
    main, other = order.iloc[0], order.iloc[1]
    assert main["main"] and not other["main"]
    assert main["yhat_any_change"] == 0 and main["ytilde_any_change"] == 0  # identical stores: nothing changes
    assert other["yhat_any_change"] == pytest.approx(len(planted_rows) / N_PROMPTS)
    assert other["yhat_pairwise_change"] == pytest.approx(len(planted_rows) / N_PROMPTS)  # two orderings: one pair
    assert main["same_demo_set"] == 1.0
    assert order_group_members({"a": {}, "b": {"labels": "flipped"}}, "a") == []


def test_mismatched_test_points_name_the_condition(tmp_path, base):
    moved = base["test_index"].copy()
    moved[5] = 1000
    with pytest.raises(ConditionError, match="'typos'.*1 extra.*1000"):
        _run(tmp_path, {"paper": ({}, {}), "typos": ({"test_inputs": "typos"}, {"overrides": {"test_index": moved}})})


def test_conditions_matched_by_test_index_not_row(tmp_path, base):
    """The same test points stored in another row order compare as identical."""
    order = np.random.default_rng(0).permutation(N_PROMPTS)
    overrides = {name: base[name][order] for name in ("prediction", "gold", "split", "test_index")}
    result = _run(tmp_path, {"paper": ({}, {}), "shuffled": ({"y": 2}, {"overrides": overrides})})
    row = result.metrics.set_index("condition").loc["shuffled"]
    assert row["accuracy_diff"] == 0 and row["yhat_change"] == 0
    wrong_gold = overrides | {"gold": 1 - overrides["gold"]}
    with pytest.raises(ConditionError, match="'bad'.*gold"):
        _run(tmp_path / "2", {"paper": ({}, {}), "bad": ({"y": 3}, {"overrides": wrong_gold})})


def test_reference_head_scored_on_the_other_conditions_heldout(tmp_path, base):
    result = _run(tmp_path, {"paper": ({}, {}), "moved": ({"labels": "x"}, {"planted": Planted(label_head=(0, 1))})})
    row = result.metrics.set_index("condition").loc["moved"]
    assert row["head_ref"] == "L1H2"  # the head planted in the reference, chosen on the reference's select
    assert row["head_own"] == "L0H1" and row["head_own_agreement"] == 1.0
    ds = open_store(tmp_path / "moved" / "store.zarr")
    held = np.flatnonzero(base["split"] == "heldout")
    y_tilde = head_predictions(ds, held, ["max"])[:, 0, 1, 2]
    assert row["head_ref_agreement"] == pytest.approx((y_tilde == base["prediction"][held]).mean())
    assert row["head_ref_agreement"] < 0.9
    assert result.metrics.set_index("condition").loc["paper", "head_ref_agreement"] == 1.0


def test_label_noise_curve_uses_the_measured_share(tmp_path, base):
    labels = base["demo_label"]
    present = labels >= 0
    rng = np.random.default_rng(5)
    wrong = present & (rng.random(labels.shape) < 0.3)  # configured 0.5, measured about 0.3
    shown_noisy = np.where(wrong, 1 - labels, labels)
    shown_flipped = np.where(present, 1 - labels, -1)
    true = [list(row[row >= 0]) for row in labels]
    specs = {
        "paper": ({"labels": "gold"}, {}),
        "noisy50": (
            {"labels": "noisy", "label_noise": 0.5},
            {"overrides": {"demo_label": shown_noisy}, "true_label": true},
        ),
        "flipped": ({"labels": "flipped"}, {"overrides": {"demo_label": shown_flipped}, "true_label": true}),
        "unmeasured": ({"labels": "noisy", "label_noise": 0.25}, {"overrides": {"demo_label": shown_noisy}}),
        "nearest": ({"labels": "gold", "demo_strategy": "nearest"}, {}),
    }
    unknown = [[None if d == 0 else y for d, y in enumerate(row)] for row in true]  # first input from another task
    specs["other_task"] = (
        {"labels": "gold", "inputs": "other_task"},
        {"overrides": {"demo_label": shown_flipped}, "true_label": unknown},
    )
    result = _run(tmp_path, specs)
    curve = result.label_noise.set_index("condition")
    assert list(curve.index) == ["paper", "noisy50", "flipped"]  # sorted by x; the unmeasured one left out
    measured = wrong.sum() / present.sum()
    assert curve.loc["noisy50", "wrong_label_share"] == pytest.approx(measured)
    assert abs(measured - 0.5) > 0.1
    assert curve.loc["noisy50", "label_noise"] == 0.5
    assert curve.loc["flipped", "wrong_label_share"] == 1.0 and curve.loc["paper", "wrong_label_share"] == 0.0
    # ŷ is unchanged while every shown label flipped: ŷ agrees with the flipped majority where it disagreed before
    metrics = result.metrics.set_index("condition")
    assert np.isnan(metrics.loc["unmeasured", "wrong_label_share"])
    assert metrics.loc["other_task", "wrong_label_share"] == 1.0  # demonstrations without a true label not counted
    assert "other_task" not in curve.index  # its inputs differ from the reference: not on the label-noise curve


def test_bandwidth_curve_and_table1(tmp_path, base):
    sim = np.random.default_rng(2).uniform(0, 1, (N_PROMPTS, 4))
    specs = {
        "paper": ({}, {}),
        "nearest": ({"demo_strategy": "nearest"}, {"similarity": sim * 0.5 + 0.5}),
        "farthest": ({"demo_strategy": "farthest"}, {"similarity": sim * 0.5}),
        "typos": ({"test_inputs": "typos", "typo_rate": 0.1}, {"overrides": {"prediction": 1 - base["prediction"]}}),
    }
    result = _run(tmp_path, specs, task="SST-2")
    band = result.bandwidth
    assert list(band["condition"]) == ["farthest", "nearest"]
    n_demos = (base["demo_label"] >= 0).sum(1)
    expected = np.mean([(sim[p, : n_demos[p]] * 0.5).mean() for p in range(N_PROMPTS)])
    assert band.iloc[0]["mean_demo_similarity"] == pytest.approx(expected)
    table1 = result.table1.set_index("condition")
    assert list(table1.index) == ["paper", "typos"]
    acc = (base["prediction"] == base["gold"]).mean()
    assert table1.loc["typos", "drop"] == pytest.approx((1 - acc) - acc)
    assert table1.loc["typos", "paper_accuracy"] == 0.534
    assert table1.loc["typos", "paper_drop"] == pytest.approx(0.534 - 0.805)
    assert table1.loc["paper", "paper_accuracy"] == 0.805
    other = _run(tmp_path / "x", {"paper": ({}, {}), "typos": ({"test_inputs": "typos"}, {})}, task="trec")
    assert other.table1["paper_accuracy"].isna().all()


def test_ood_type_names():
    assert ood_type({}) == "none" and ood_type({"test_inputs": "original"}) == "none"
    assert ood_type({"test_inputs": "rewrites", "rewrite_type": "complex"}) == "complex"
    assert paper_table1_key("rare_words") == "rare_words" and paper_table1_key("Typos") == "typos"
    assert paper_table1_key("shuffled") is None


def test_encoder_kr_columns(tmp_path, base):
    store, prompts = _condition(tmp_path, "paper")
    kr = pd.DataFrame(
        {
            "prompt_id": np.arange(N_PROMPTS),
            "split": base["split"],
            "test_index": base["test_index"],
            "gold": base["gold"],
            "n_demos": 4,
            "pred_cosine": base["gold"],
            "pred_softmax": base["prediction"],
        }
    )
    kr.to_csv(tmp_path / "kr.csv", index=False)
    result = compare_conditions(
        condition_inputs({"paper": store}, {"paper": prompts}, {"paper": {}}, kr_csvs={"paper": tmp_path / "kr.csv"}),
        "paper",
        "t",
        StageOptions(bootstrap=BOOT),
    )
    row = result.metrics.iloc[0]
    assert row["encoder_cosine_accuracy"] == 1.0 and row["encoder_softmax_agreement"] == 1.0
    kr.iloc[:5].to_csv(tmp_path / "short.csv", index=False)
    with pytest.raises(ConditionError, match="short.csv lacks test points"):
        compare_conditions(
            condition_inputs({"paper": store}, {"paper": prompts}, {"paper": {}}, {"paper": tmp_path / "short.csv"}),
            "paper",
            "t",
        )


def test_conditions_numbers_then_tables_and_figures_from_the_csvs(tmp_path, base):
    """The stage's three steps: the numbers CSVs from the stores, then the tables and the figures from the CSVs."""
    from dataclasses import replace

    from kicl.analysis.conditions_stage import NUMBER_FILES, read_condition_numbers, reading, write_condition_numbers
    from kicl.figures.conditions import FIGURE_FILES, write_condition_figures
    from kicl.tables.conditions import TABLE_FILES, write_condition_tables

    rows = np.array([0, 1, 2, 3, 4, 5, 6, 7])
    sim = np.full((N_PROMPTS, 4), 0.4)
    specs = {
        "paper": ({"labels": "gold"}, {}),
        "perm1": ({"labels": "gold", "order_seed": 1}, {}),
        "nearest": ({"labels": "gold", "demo_strategy": "nearest"}, {"similarity": sim}),
        "flipped": (
            {"labels": "flipped"},
            {
                "overrides": {"prediction": _changed(base["prediction"], rows)},
                "true_label": [list(1 - r[r >= 0]) for r in base["demo_label"]],
            },
        ),
        "typos": ({"labels": "gold", "test_inputs": "typos"}, {}),
    }
    stores, prompts, protocols = {}, {}, {}
    for name, (protocol, options) in specs.items():
        stores[name], prompts[name] = _condition(tmp_path, name, **options)
        protocols[name] = protocol
    out = tmp_path / "conditions"
    out.mkdir()
    numbers = {key: out / name for key, name in NUMBER_FILES.items()}
    results = compare_conditions(
        condition_inputs(stores, prompts, protocols), "paper", "sst2", StageOptions(bootstrap=BOOT)
    )
    write_condition_numbers(results, numbers, model="synthetic", head_maps=["paper", "flipped"])
    assert sorted(p.name for p in out.iterdir()) == sorted(NUMBER_FILES.values())
    tables = {key: out / name for key, name in TABLE_FILES.items()}
    write_condition_tables(read_condition_numbers(numbers, protocols, "paper", BOOT), tables, model="synthetic")
    # the tables read back from the CSVs are the tables of the numbers in memory
    readings = [reading(r, "paper", 1 - results.level) for _, r in results.metrics.iterrows()]
    direct = {key: tmp_path / f"direct_{name}" for key, name in TABLE_FILES.items()}
    write_condition_tables(replace(results, metrics=results.metrics.assign(reading=readings)), direct, "synthetic")
    assert all(direct[key].read_bytes() == tables[key].read_bytes() for key in TABLE_FILES)
    figures = {key: out / name for key, name in FIGURE_FILES.items()}
    write_condition_figures(numbers, figures, "paper", BOOT, head_maps=["paper", "flipped"])
    paths = numbers | tables | figures
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths.values())
    table = pd.read_csv(paths["csv"]).set_index("condition")
    d, lo, hi, p = table.loc["flipped", ["accuracy_diff", "accuracy_diff_low", "accuracy_diff_high", "accuracy_diff_p"]]
    expected = f"flipped − paper: {d:+.3f} [{lo:+.3f}, {hi:+.3f}], McNemar p = {p:.3f}, Holm p = "
    assert table.loc["flipped", "reading"].startswith(expected)
    assert expected in paths["md"].read_text()
    figure = pd.read_csv(paths["figure_csv"])
    acc = figure[(figure.panel == "accuracy")].set_index("condition")["y"]
    np.testing.assert_allclose(acc.loc[table.index], table["accuracy"])
    noise = figure[(figure.panel == "label_noise") & (figure.series == "accuracy")].set_index("condition")
    assert noise.loc["flipped", "x"] == 1.0 and noise.loc["paper", "x"] == 0.0
    assert set(figure.loc[figure.panel == "bandwidth", "condition"]) == {"nearest"}
    heads = pd.read_csv(paths["heads_csv"])
    assert set(heads["condition"]) == {"paper", "flipped"} and len(heads) == 2 * 2 * 3
    assert pd.read_csv(paths["order_csv"])["members"].tolist() == ["paper, perm1"]
    t1 = pd.read_csv(paths["table1_csv"]).set_index("condition")
    assert t1.loc["typos", "paper_accuracy"] == 0.534
    assert "0.534" in paths["table1_md"].read_text() and r"\begin{tabular}" in paths["table1_tex"].read_text()

    from kicl.workflow.summary import headline  # the summary page's headline numbers of the conditions table

    lines = headline(paths["csv"])
    assert len(lines) == len(specs) and lines[0] == f"conditions / paper: accuracy {table.loc['paper', 'accuracy']:.3f}"
    assert f"flipped: accuracy {table.loc['flipped', 'accuracy']:.3f}, Δ {d:+.3f} [{lo:+.3f}, {hi:+.3f}]" in lines[3]


def _edit_records(prompts, edit):
    """Rewrite a prompt file with `edit(record)` applied to each record."""
    records = [json.loads(line) for line in prompts.read_text().splitlines()]
    prompts.write_text("".join(json.dumps(edit(record) or record) + "\n" for record in records))


def _fixed_wrong(base, n_right, n_wrong, start=0):
    """ŷ with `n_right` of the reference's wrong points made right and `n_wrong` of its right points made wrong."""
    wrong_rows = np.flatnonzero(base["prediction"] != base["gold"])[start : start + n_right]
    right_rows = np.flatnonzero(base["prediction"] == base["gold"])[start : start + n_wrong]
    out = base["prediction"].copy()
    out[wrong_rows] = base["gold"][wrong_rows]
    out[right_rows] = 1 - base["gold"][right_rows]
    return out


def test_condition_p_values_are_exact_mcnemar_holm_adjusted_and_decide_the_reading(tmp_path, base):
    """5 discordant pairs all one way: the percentile bootstrap says p ≈ 0.01 and an interval excluding 0, the exact
    McNemar test 0.0625 (audit 2, L1); three conditions against one reference: Holm-adjusted (L2)."""
    from kicl.tables.conditions import reading

    specs = {
        "paper": ({}, {}),
        "five_up": ({"x": 1}, {"overrides": {"prediction": _fixed_wrong(base, 5, 0)}}),
        "many_up": ({"x": 2}, {"overrides": {"prediction": _fixed_wrong(base, 9, 0)}}),
        "mixed": ({"x": 3}, {"overrides": {"prediction": _fixed_wrong(base, 3, 2, start=5)}}),
    }
    metrics = _run(tmp_path, specs).metrics.set_index("condition")
    correct = {n: (metrics.loc[n, "accuracy"]) for n in specs}
    assert metrics.loc["five_up", "accuracy_diff"] == pytest.approx(5 / N_PROMPTS) and correct["five_up"] > 0
    p = {n: metrics.loc[n, "accuracy_diff_p"] for n in ("five_up", "many_up", "mixed")}
    assert p["five_up"] == pytest.approx(0.0625) and p["many_up"] == pytest.approx(2 / 2**9)
    assert p["mixed"] == pytest.approx(1.0)
    adjusted = holm([p["five_up"], p["many_up"], p["mixed"]])
    assert metrics.loc[["five_up", "many_up", "mixed"], "accuracy_diff_p_holm"].tolist() == pytest.approx(adjusted)
    assert np.isnan(metrics.loc["paper", "accuracy_diff_p_holm"])
    row = metrics.loc["five_up"].copy()
    row["condition"] = "five_up"
    assert row["accuracy_diff_low"] > 0  # the percentile interval excludes 0 ...
    assert reading(row, "paper", 0.1).endswith("≥ 0.1: no difference shown")  # ... the Holm-adjusted McNemar p does not
    row = metrics.loc["many_up"].copy()
    row["condition"] = "many_up"
    assert reading(row, "paper", 0.1).endswith("< 0.1: differs from paper")


def test_a_rare_change_rate_gets_a_wilson_interval(tmp_path, base):
    """No ŷ change in 40 points: the interval is not [0, 0] (audit 2, L2)."""
    metrics = _run(tmp_path, {"paper": ({}, {}), "same": ({"x": 1}, {})}).metrics.set_index("condition")
    row = metrics.loc["same"]
    assert row["yhat_change"] == 0 and row["yhat_change_low"] == 0
    assert row["yhat_change_high"] == pytest.approx(wilson_interval(0, N_PROMPTS, BOOT["level"])[1])
    assert row["yhat_change_high"] > 0.03


def test_order_groups_compare_shown_pairs_pairwise_rates_and_a_redraw_scale(tmp_path, base):
    """Three orderings of a noisy condition: the mean pairwise ŷ-change rate, triples that differ (a stale or
    pre-fix prompt file: other shown inputs) flagged, and the ŷ change under a re-drawn set as scale (M4)."""
    rows_2, rows_3 = np.array([0, 1, 2, 3]), np.array([2, 3, 10, 11, 12, 13])
    noisy = {"labels": "noisy", "label_noise": 0.5}
    redrawn = np.array([5, 6, 7])
    specs = {
        "paper": ({}, {}),
        "balanced": (
            {"demo_strategy": "class_balanced"},
            {"overrides": {"prediction": _changed(base["prediction"], redrawn)}},
        ),
        "nearest": ({"demo_strategy": "nearest"}, {}),
        "noisy": (noisy, {}),
        "noisy_o1": (noisy | {"order_seed": 1}, {"overrides": {"prediction": _changed(base["prediction"], rows_2)}}),
        "noisy_o2": (noisy | {"order_seed": 2}, {"overrides": {"prediction": _changed(base["prediction"], rows_3)}}),
    }
    stores, prompts, protocols = {}, {}, {}
    for name, (protocol, options) in specs.items():
        stores[name], prompts[name] = _condition(tmp_path, name, **options)
        protocols[name] = protocol
    other_pairs = {0, 7, 19}  # the second ordering shows other inputs on these test points

    def swap_inputs(record):
        if record["prompt_id"] in other_pairs:
            record["demos"][0]["text"], record["demos"][1]["text"] = (
                record["demos"][1]["text"],
                record["demos"][0]["text"],
            )

    _edit_records(prompts["noisy_o1"], swap_inputs)
    result = compare_conditions(
        condition_inputs(stores, prompts, protocols), "paper", "t", StageOptions(bootstrap=BOOT)
    )
    group = result.order.set_index("members").loc["noisy, noisy_o1, noisy_o2"]
    y = np.stack([base["prediction"], _changed(base["prediction"], rows_2), _changed(base["prediction"], rows_3)])
    pairwise = np.mean([(y[0] != y[1]).mean(), (y[0] != y[2]).mean(), (y[1] != y[2]).mean()])
    assert group["yhat_pairwise_change"] == pytest.approx(pairwise)
    assert group["yhat_any_change"] == pytest.approx(len(set(rows_2) | set(rows_3)) / N_PROMPTS)
    assert group["yhat_pairwise_change_high"] > group["yhat_pairwise_change"]
    assert group["same_demo_set"] == pytest.approx(1 - len(other_pairs) / N_PROMPTS)
    assert group["same_demo_rows"] == 1.0  # the same rows: only the sorted pool indices were compared before
    assert f"on {len(other_pairs)} of {N_PROMPTS} test points" in group["pairs_note"]
    from kicl.tables.conditions import order_table

    assert (
        order_table(result.order)
        .set_index("orderings")
        .loc["noisy, noisy_o1, noisy_o2", "note"]
        .startswith("the orderings show other")
    )
    assert group["redraw_condition"] == "balanced" and group["redraw_kind"] == "re-drawn random demonstration set"
    assert group["redraw_yhat_change"] == pytest.approx(len(redrawn) / N_PROMPTS)
    # without a random re-draw the scale falls back to a re-selected set, and says so; without that, none
    del stores["balanced"]
    result = compare_conditions(
        condition_inputs(stores, prompts, protocols), "paper", "t", StageOptions(bootstrap=BOOT)
    )
    assert result.order["redraw_condition"].iloc[0] == "nearest"
    assert result.order["redraw_kind"].iloc[0].startswith("no random re-draw in this run")
    del stores["nearest"]
    result = compare_conditions(
        condition_inputs(stores, prompts, protocols), "paper", "t", StageOptions(bootstrap=BOOT)
    )
    assert result.order["redraw_kind"].iloc[0].startswith("none") and np.isnan(
        result.order["redraw_yhat_change"].iloc[0]
    )


def test_table1_reports_the_share_changed_and_the_drop_on_changed_inputs(tmp_path, base):
    """Typos leave some test inputs unchanged (audit 2, L6): the drop on the changed ones is not diluted."""
    changed = np.zeros(N_PROMPTS, bool)
    changed[::4] = True  # a quarter of the inputs changed
    wrong_rows = np.flatnonzero(changed & (base["prediction"] == base["gold"]))
    stores, prompts = {}, {}
    stores["paper"], prompts["paper"] = _condition(tmp_path, "paper")
    stores["typos"], prompts["typos"] = _condition(
        tmp_path, "typos", overrides={"prediction": _changed(base["prediction"], wrong_rows)}
    )
    _edit_records(prompts["typos"], lambda r: r | {"test_input_changed": bool(changed[r["prompt_id"]])})
    protocols = {"paper": {}, "typos": {"test_inputs": "typos", "typo_rate": 0.2}}
    result = compare_conditions(
        condition_inputs(stores, prompts, protocols), "paper", "sst2", StageOptions(bootstrap=BOOT)
    )
    table1 = result.table1.set_index("condition")
    assert table1.loc["typos", "share_changed"] == pytest.approx(0.25) and table1.loc["typos", "n_changed"] == 10
    assert table1.loc["typos", "drop"] == pytest.approx(-len(wrong_rows) / N_PROMPTS)
    assert table1.loc["typos", "drop_changed"] == pytest.approx(-len(wrong_rows) / changed.sum())
    assert table1.loc["typos", "drop_changed_p"] == pytest.approx(
        mcnemar_p(np.zeros(len(wrong_rows)), np.ones(len(wrong_rows)))
    )
    assert np.isnan(table1.loc["paper", "share_changed"])  # the synthetic reference records cannot say
    from kicl.tables.conditions import table1_table

    assert "0.250 [" in table1_table(result.table1).set_index("condition").loc["typos", "inputs changed"]


def test_stale_prompt_file_is_named(tmp_path, base):
    """A prompt file whose shown labels are not the store's (one of them stale) stops the stage."""
    store_a, prompts_a = _condition(tmp_path, "paper")
    store_b, _ = _condition(
        tmp_path, "flipped", overrides={"demo_label": np.where(base["demo_label"] >= 0, 1 - base["demo_label"], -1)}
    )
    with pytest.raises(ConditionError, match="'flipped': prompt 0 of .*paper/prompts.jsonl shows demonstration labels"):
        compare_conditions(
            condition_inputs(
                {"paper": store_a, "flipped": store_b},
                {"paper": prompts_a, "flipped": prompts_a},
                {"paper": {}, "flipped": {"labels": "flipped"}},
            ),
            "paper",
            "t",
            StageOptions(bootstrap=BOOT),
        )


# ---------------------------------------------------------------- Table 2: intervals of balanced accuracy and macro-F1


def test_resampled_classification_scores_by_hand():
    from kicl.analysis.baselines import classification_scores, resampled_classification_scores

    pred, ref = np.array([0, 0, 0, 1, 2]), np.array([0, 0, 1, 1, 1])
    weights = np.array([[1, 1, 1, 1, 1], [2, 0, 1, 0, 2], [0, 0, 3, 1, 1]])
    got = resampled_classification_scores(pred, ref, 3, weights)
    for r, w in enumerate(weights):
        repeat = np.repeat(np.arange(5), w)
        want = classification_scores(pred[repeat], ref[repeat], 3)
        for metric, value in want.items():
            assert got[metric][r] == pytest.approx(value), (r, metric)
    # resample 1: tp0 = 2, n_ref0 = 2, n_ref1 = 3 (recall 0), class 2 predicted twice but absent from ref
    assert got["balanced_accuracy"][1] == pytest.approx(0.5)
    assert got["macro_f1"][1] == pytest.approx((2 * 2 / (2 + 3) + 0 + 0) / 3)


def test_table2_metric_intervals(tmp_path, base):
    from kicl.tables.table2 import Table2Options, table2

    store, _ = _condition(tmp_path, "paper")
    kr = pd.DataFrame({"prompt_id": np.arange(N_PROMPTS), "split": base["split"], "gold": base["gold"]})
    kr["pred_cosine"], kr["pred_softmax"] = kr["gold"], 1 - kr["gold"]
    kr.to_csv(tmp_path / "kr.csv", index=False)
    out = [tmp_path / f"t.{ext}" for ext in ("csv", "md", "tex")]
    frame = table2("m", {"t": store}, {("enc", "t"): tmp_path / "kr.csv"}, *out, Table2Options(n_boot=100)).set_index(
        "row"
    )
    for metric in ("balanced_accuracy", "macro_f1"):
        assert tuple(frame.loc["encoder:enc:cosine", [f"{metric}_low", f"{metric}_high"]]) == (1.0, 1.0)
        assert tuple(frame.loc["encoder:enc:softmax", [f"{metric}_low", f"{metric}_high"]]) == (0.0, 0.0)
        low, value, high = frame.loc["icl_accuracy", [f"{metric}_low", metric, f"{metric}_high"]]
        assert low <= value <= high and low < high
    ba = frame.loc["icl_accuracy", ["balanced_accuracy", "balanced_accuracy_low", "balanced_accuracy_high"]]
    assert "{:.3f} [{:.3f}, {:.3f}]".format(*ba) in out[1].read_text()


def test_bandwidth_uses_encoder_cosines_only(tmp_path, base):
    """BM25 / model-kernel similarities are not cosines: only demo_encoder_similarity puts such a condition on the
    bandwidth curve."""
    import json

    sim = np.full((N_PROMPTS, 4), 0.7)
    stores, prompts = {}, {}
    for name in ("paper", "bm25", "bm25_enc"):
        stores[name], prompts[name] = _condition(tmp_path, name, similarity=None if name == "paper" else sim * 9)
    for name in ("bm25", "bm25_enc"):
        meta = json.loads((tmp_path / name / "meta.json").read_text())
        (tmp_path / name / "meta.json").write_text(json.dumps(meta | {"demo_similarity_kind": "bm25"}))
    records = [json.loads(line) for line in prompts["bm25_enc"].read_text().splitlines()]
    for rec in records:
        rec["demo_encoder_similarity"] = [0.25] * len(rec["demos"])
    prompts["bm25_enc"].write_text("".join(json.dumps(rec) + "\n" for rec in records))
    protocols = {
        "paper": {},
        "bm25": {"demo_strategy": "bm25"},
        "bm25_enc": {"demo_strategy": "bm25", "retrieval_pool_size": 9},
    }
    result = compare_conditions(
        condition_inputs(stores, prompts, protocols), "paper", "t", StageOptions(bootstrap=BOOT)
    )
    assert result.bandwidth["condition"].tolist() == ["bm25_enc"]
    assert result.bandwidth["mean_demo_similarity"].iloc[0] == pytest.approx(0.25)
    # a condition that also changes anything but the selection (here the labels) is not a bandwidth point
    protocols["bm25_enc"] = {"demo_strategy": "bm25", "labels": "flipped"}
    assert compare_conditions(
        condition_inputs(stores, prompts, protocols), "paper", "t", StageOptions(bootstrap=BOOT)
    ).bandwidth.empty


def test_mean_demo_similarity_from_the_prompt_file_embeddings(tmp_path):
    from kicl.prompts.files import read_prompt_records

    store, prompts = _condition(tmp_path, "paper")
    records = read_prompt_records(prompts)
    texts = sorted({r["test_text"] for r in records} | {d["text"] for r in records for d in r["demos"]})
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(len(texts), 5))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    np.savez(tmp_path / "emb.npz", texts=np.array(texts), embeddings=vectors.astype(np.float32))
    row = {t: i for i, t in enumerate(texts)}
    expected = np.mean(
        [np.mean([vectors[row[d["text"]]] @ vectors[row[r["test_text"]]] for d in r["demos"]]) for r in records]
    )
    emb = {"paper": tmp_path / "emb.npz"}
    result = compare_conditions(
        condition_inputs({"paper": store}, {"paper": prompts}, {"paper": {}}, None, emb), "paper", "t"
    )
    assert result.metrics.iloc[0]["mean_demo_similarity"] == pytest.approx(expected, abs=1e-5)
    np.savez(tmp_path / "stale.npz", texts=np.array(texts[:3]), embeddings=vectors[:3].astype(np.float32))
    with pytest.raises(ConditionError, match="stale.npz has no embedding of the text"):
        stale = {"paper": tmp_path / "stale.npz"}
        compare_conditions(
            condition_inputs({"paper": store}, {"paper": prompts}, {"paper": {}}, None, stale), "paper", "t"
        )
