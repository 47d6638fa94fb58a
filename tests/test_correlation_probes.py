"""Fig 4 (kernel weight vs sim_pred correlation) and Fig 5 (key/value probes): references, planted signals, nulls."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from kicl.analysis.correlation import CorrelationOptions, correlation_stats, per_prompt_pearson, simpred_correlation
from kicl.analysis.probes import ProbeOptions, clustered_se, group_split, probe_accuracy, ridge_fit_predict
from kicl.figures.fig4_simpred_correlation import correlation_figure
from kicl.figures.fig5_kv_probes import probe_figure
from kicl.store.reader import StoreError, open_store
from kicl.store.synthetic import Planted, make_synthetic_store


@pytest.fixture(scope="module")
def random_store(tmp_path_factory):
    return make_synthetic_store(
        tmp_path_factory.mktemp("stores") / "random.zarr",
        n_prompts=300,
        n_labels=3,
        n_layers=2,
        n_heads=3,
        kv_prompts=200,
        planted=Planted(label_head=None, simpred_head=None, kv_head=None),
        seed=2,
    )


def with_pool_texts(ds, pool_size, seed=0):
    """The store with demonstration texts drawn from a pool of `pool_size` (so texts repeat across prompts)."""
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, pool_size, ds["demo_label"].shape)
    rows[ds["demo_label"].values < 0] = -1
    text = np.where(rows >= 0, np.char.add("pool text ", rows.astype(str)), "")
    return ds.assign(demo_text=(("prompt", "demo"), text), demo_pool_index=(("prompt", "demo"), rows))


def pairs_case(seed=0, n_prompts=80, n_demos=6, n_heads=4):
    rng = np.random.default_rng(seed)
    valid = np.ones((n_prompts, n_demos), bool)
    valid[: n_prompts // 4, n_demos - 2 :] = False  # some prompts have fewer demonstrations
    x = rng.normal(size=(n_prompts, n_demos, n_heads))
    y = rng.normal(size=(n_prompts, n_demos))
    length = rng.integers(3, 12, (n_prompts, n_demos)).astype(float)
    return x, y, length, valid


# ---------------------------------------------------------------- Fig 4


def test_units_equal_their_scipy_references():
    x, y, length, valid = pairs_case()
    x[..., 0] += 0.7 * y
    xv, yv = x[valid], y[valid]

    def demean(a):
        a = np.where(valid.reshape(valid.shape + (1,) * (a.ndim - 2)), a, np.nan)
        return a - np.nanmean(a, 1, keepdims=True)

    slot = np.broadcast_to(np.arange(valid.shape[1]), valid.shape)
    dummies = [np.broadcast_to(slot == k, valid.shape).astype(float) for k in range(1, valid.shape[1])]
    z_pairs = np.column_stack([np.ones(len(yv))] + [d[valid] for d in dummies] + [length[valid]])
    z_centred = np.column_stack([demean(d)[valid] for d in dummies] + [demean(length)[valid]])

    def residual(z, v):
        return v - z @ np.linalg.lstsq(z, v, rcond=None)[0]

    xc, yc = demean(x)[valid], demean(y)[valid]
    pairs = correlation_stats(x, y, length, valid, CorrelationOptions(unit="pairs", n_permutations=20, n_boot=20))
    centred = correlation_stats(x, y, length, valid, CorrelationOptions(unit="centred", n_permutations=20, n_boot=20))
    per_prompt = correlation_stats(
        x, y, length, valid, CorrelationOptions(unit="per_prompt", n_permutations=20, n_boot=20)
    )
    for g in range(x.shape[-1]):
        assert pairs["r"][g] == pytest.approx(stats.pearsonr(xv[:, g], yv).statistic, abs=1e-9)
        assert centred["r"][g] == pytest.approx(stats.pearsonr(xc[:, g], yc).statistic, abs=1e-9)
        expect = stats.pearsonr(residual(z_pairs, xv[:, g]), residual(z_pairs, yv)).statistic
        assert pairs["partial_r"][g] == pytest.approx(expect, abs=1e-9)
        expect = stats.pearsonr(residual(z_centred, xc[:, g]), residual(z_centred, yc)).statistic
        assert centred["partial_r"][g] == pytest.approx(expect, abs=1e-9)
    np.testing.assert_allclose(
        per_prompt["r"],
        np.nanmean(
            per_prompt_pearson(np.where(valid[..., None], x, np.nan).transpose(0, 2, 1), np.where(valid, y, np.nan)), 0
        ),
    )


def test_planted_correlation_recovered_and_null_at_chance():
    x, y, length, valid = pairs_case(seed=1, n_prompts=150)
    x[..., 0] += 0.8 * y  # head 0: planted; heads 1-3: independent
    for unit in ("centred", "pairs", "per_prompt"):
        out = correlation_stats(
            x, y, length, valid, CorrelationOptions(unit=unit, n_permutations=200, n_boot=200, seed=3)
        )
        assert out["r"][0] > 0.5 and out["r_low"][0] > 0.4 and out["r_p_max"][0] < 0.01
        assert np.all(out["r_p_max"][1:] > 0.01)  # head 3 under per_prompt is a 4 % draw of this seed
        centre = np.abs(out["r_null_low"] + out["r_null_high"])
        assert np.all(centre[1:] < 0.05)  # the null is centred on 0 ...
        if unit == "pairs":  # ... except where the prompt means correlate: within-prompt permutations keep those
            assert out["r_null_low"][0] + out["r_null_high"][0] > 0.1
        else:
            assert centre[0] < 0.05
        assert np.all(out["r_null_high"][1:] < 0.15)


def test_partial_correlation_removes_a_position_confound():
    rng = np.random.default_rng(4)
    n_prompts, n_demos = 200, 8
    valid = np.ones((n_prompts, n_demos), bool)
    slot = np.broadcast_to(np.arange(n_demos, dtype=float), valid.shape)
    length = rng.integers(3, 12, valid.shape).astype(float)
    recency = (slot / n_demos) ** 2  # both sides depend on the slot (and the kernel weight on the length) only
    y = recency + 0.05 * rng.normal(size=valid.shape)
    x = np.stack(
        [
            recency + 0.02 * length + 0.05 * rng.normal(size=valid.shape),  # confounded only
            y + 0.05 * rng.normal(size=valid.shape),
        ],
        -1,
    )  # truly tied to sim_pred
    for unit in ("centred", "pairs", "per_prompt"):
        out = correlation_stats(x, y, length, valid, CorrelationOptions(unit=unit, n_permutations=100, n_boot=50))
        assert out["r"][0] > 0.6, unit  # plain r is fooled by the shared slot dependence
        assert abs(out["partial_r"][0]) < 0.15, unit
        assert out["partial_r"][1] > 0.4 and out["partial_r_p_max"][1] < 0.02, unit


def test_centred_and_pooled_differ_on_a_prompt_level_confound():
    rng = np.random.default_rng(5)
    n_prompts, n_demos = 100, 6
    valid = np.ones((n_prompts, n_demos), bool)
    scale = rng.normal(size=(n_prompts, 1))  # a per-prompt offset shared by both sides
    x = (scale + 0.3 * rng.normal(size=(n_prompts, n_demos)))[..., None]
    y = scale + 0.3 * rng.normal(size=(n_prompts, n_demos))
    length = np.full(valid.shape, 5.0)
    pairs = correlation_stats(x, y, length, valid, CorrelationOptions(unit="pairs", n_permutations=100, n_boot=50))
    centred = correlation_stats(x, y, length, valid, CorrelationOptions(unit="centred", n_permutations=1000, n_boot=50))
    assert pairs["r"][0] > 0.8 and abs(centred["r"][0]) < 0.12
    assert pairs["r_null_low"][0] > 0.7  # within-prompt permutations keep the prompt level: pairs' null is high too
    assert centred["r_p"][0] > 0.05


def test_simpred_correlation_on_store(planted_store, tmp_path):
    ds = open_store(planted_store)
    result = simpred_correlation(
        ds,
        np.arange(ds.sizes["prompt"]),
        ["max", "mean"],
        CorrelationOptions("centred", n_permutations=50, n_boot=50),
        batch_size=17,
    )
    layer, head = Planted().simpred_head
    r = result["r"].sel(pooling="max").values
    assert r[layer, head] > 0.4 and result["r_p_max"].sel(pooling="max").values[layer, head] < 0.05
    assert np.nanargmax(r) == np.ravel_multi_index((layer, head), r.shape)
    with pytest.raises(ValueError, match="analysis.correlation_unit"):
        simpred_correlation(ds, np.arange(10), ["max"], CorrelationOptions("pooled"))
    correlation_figure(
        planted_store,
        tmp_path / "f.png",
        tmp_path / "f.csv",
        pools=["max"],
        options=CorrelationOptions(n_permutations=20, n_boot=20),
        title="t",
    )
    frame = pd.read_csv(tmp_path / "f.csv")
    assert len(frame) == ds.sizes["layer"] * ds.sizes["head"] and (tmp_path / "f.png").stat().st_size > 0
    assert {"r", "r_low", "r_high", "partial_r", "r_null_high", "r_p", "r_max_t", "r_above_max_null"} <= set(frame)
    row = frame.query(f"layer == {layer} and head == {head}").iloc[0]
    assert row["r_above_max_null"] and row["unit"] == "centred"


# ---------------------------------------------------------------- Fig 5


@pytest.mark.parametrize("n_classes", [2, 5])
def test_ridge_matches_sklearn_ridge_classifier(n_classes):
    from sklearn.linear_model import RidgeClassifier

    rng = np.random.default_rng(n_classes)
    x = rng.normal(size=(3, 80, 6))
    y = rng.integers(0, n_classes, 80) * 7 + 3  # arbitrary class ids
    x_test = rng.normal(size=(3, 30, 6))
    got = ridge_fit_predict(x, y, x_test, alpha=0.01)
    for g in range(3):
        expected = RidgeClassifier(alpha=0.01).fit(x[g], y).predict(x_test[g])
        np.testing.assert_array_equal(got[g], expected)


def test_group_split_never_puts_a_text_on_both_sides(planted_store):
    ds = with_pool_texts(open_store(planted_store), pool_size=60)  # 120 prompts x 4-6 demos from 60 texts
    groups = ds["demo_text"].values[ds["demo_label"].values >= 0]
    assert len(np.unique(groups)) < len(groups) / 4  # texts do repeat
    for seed in range(5):
        is_test = group_split(groups, 0.2, seed)
        assert not set(groups[is_test]) & set(groups[~is_test])
        assert 0.1 < len(set(groups[is_test])) / len(set(groups)) < 0.3
    result = probe_accuracy(ds, "values", 0.01, 0.2, seed=0, n_null=2)
    assert result.attrs["split_unit"] == "demo_text"
    assert result.attrs["n_test_texts"] + result.attrs["n_train_texts"] == len(np.unique(groups))
    # a split by prompt (the old one) does put texts on both sides of this store
    prompt_test = np.isin(np.arange(ds.sizes["prompt"]), np.random.default_rng(0).permutation(ds.sizes["prompt"])[:24])
    text = ds["demo_text"].values
    assert set(text[prompt_test].ravel()) & set(text[~prompt_test].ravel()) - {""}


def test_probes_recover_planted_signal_and_reference_lines(planted_store):
    ds = with_pool_texts(open_store(planted_store), pool_size=400)
    layer, head = Planted().kv_head
    for variable in ["keys", "values"]:
        result = probe_accuracy(ds, variable, 0.01, 0.2, seed=0, n_null=5)
        acc = result["accuracy"]
        assert acc.sel(offset=0).values[layer, head] >= 0.97
        noise = acc.values.copy()
        noise[1, layer, head] = np.nan
        assert np.nanmax(noise) < 0.8
        assert np.all(np.isfinite(result["se"].values)) and np.all(result["se"].values < 0.08)
        assert abs(result.attrs["null_mean"] - result.attrs["majority"]) < 0.15
        assert result["null_accuracy"].sel(offset=0).values[layer, head] < 0.7  # the null breaks the planted link
    # values -> y_i at offset 0: the label token's identity is the label
    assert probe_accuracy(ds, "values", 0.01, 0.2, seed=0, n_null=0).attrs["identity_offset0"] == 1.0


def test_probes_and_shuffled_null_at_chance_on_noise(random_store):
    ds = with_pool_texts(open_store(random_store), pool_size=500, seed=1)
    for variable, n_classes in [("keys", 4), ("values", 3)]:
        result = probe_accuracy(ds, variable, 0.01, 0.3, seed=1, n_null=5)
        n_test = result.attrs["n_test"]
        chance = 1 / n_classes
        sd = np.sqrt(chance * (1 - chance) / n_test)
        for name in ("accuracy", "null_accuracy"):
            acc = result[name].values
            assert abs(acc.mean() - chance) < 3 * sd, name
            assert np.all(np.abs(acc - chance) < 4.5 * sd), name


def test_clustered_se_matches_hand_value():
    correct = np.array([1, 1, 0, 0, 1, 0], float)
    groups = np.array(["a", "a", "b", "b", "c", "c"])
    m, mean = 6, correct.mean()
    sums = np.array([correct[:2].sum() - 2 * mean, correct[2:4].sum() - 2 * mean, correct[4:].sum() - 2 * mean])
    assert clustered_se(correct, groups) == pytest.approx(np.sqrt(1.5 * (sums**2).sum()) / m)
    iid = np.array(["a", "b", "c", "d", "e", "f"])
    assert clustered_se(correct, iid) == pytest.approx(np.sqrt(6 / 5 * ((correct - mean) ** 2).sum()) / m)


def test_probe_figure_and_missing_variable(planted_store, tmp_path):
    probe_figure(
        planted_store, tmp_path / "k.png", tmp_path / "v.png", tmp_path / "p.csv", ProbeOptions(n_null=2), title="t"
    )
    frame = pd.read_csv(tmp_path / "p.csv")
    assert set(frame["variable"]) == {"keys", "values"} and set(frame["offset"]) == {-1, 0, 1, 2, 3}
    assert {"se", "null_accuracy", "null_q95", "majority", "identity_baseline", "n_test_texts"} <= set(frame)
    assert frame.query("offset == 0")["identity_baseline"].notna().all()
    assert frame.query("offset != 0")["identity_baseline"].isna().all()
    with pytest.raises(StoreError, match="keys_prerope"):
        probe_figure(
            planted_store, tmp_path / "k.png", tmp_path / "v.png", tmp_path / "p.csv", ProbeOptions(keys="keys_prerope")
        )
