"""Conditions at the prompt level (issue 11): bm25, model_kernel and similarity_band selection, n_demos sweeps,
demo_order and order_seed, the similarity-provider interface, and the protocol keys' defaults and errors."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import PROTOCOL, ToyEmbedding, check_segment_map, cosine, gpt2_style_tokenizer, spec_with, toy_tables

from kicl.config import SCHEMA_PATH, ConfigError, config_errors, defaults_for
from kicl.prompts.bm25 import bm25_similarity
from kicl.prompts.build import PromptError, PromptTables, build_prompt_set
from kicl.prompts.options import Protocol
from kicl.prompts.retrieval import (
    encoder_similarity,
    needed_similarities,
    needs_bm25,
    needs_encoder,
    needs_model_kernel,
    similarity_quantiles,
)
from kicl.prompts.strategies import STRATEGIES

os.environ.setdefault("HF_HUB_OFFLINE", "1")

#: the protocol keys added for the conditions of issues 11 and 12
NEW_KEYS = (
    "similarity_band",
    "demo_order",
    "order_seed",
    "labels",
    "label_noise",
    "abstract_labels",
    "inputs",
    "other_task",
    "test_inputs",
    "typo_rate",
    "rare_word_rate",
    "rare_word_gap",
    "rewrites_file",
    "rewrite_type",
)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return gpt2_style_tokenizer(tmp_path_factory.mktemp("bpe"))


class FakeKernel:
    """A model_kernel provider: a fixed random score per (test text, pool text); records its calls."""

    def __init__(self):
        self.calls = []

    def score(self, test_text, pool_text):
        return float(np.random.default_rng(abs(hash((test_text, pool_text))) % 2**32).random())

    def __call__(self, test_texts, pool_texts):
        self.calls.append((list(test_texts), list(pool_texts)))
        return np.array([[self.score(t, p) for p in pool_texts] for t in test_texts])


def build(tokenizer, eval_table, pool, protocol=None, embed=None, similarity_providers=None):
    providers = dict(similarity_providers or {}) | ({"encoder": encoder_similarity(embed)} if embed else {})
    tables, protocol = PromptTables(eval_table, pool), Protocol.of(PROTOCOL | (protocol or {}))
    return build_prompt_set("toy", spec_with(), "m", tokenizer, tables, protocol, None, providers)


# ---- which similarity a protocol needs ---------------------------------------------------------------


def test_one_function_decides_which_similarities_a_protocol_needs():
    assert needed_similarities(Protocol.of({"demo_strategy": "random"})) == frozenset()
    assert needed_similarities(Protocol.of({"demo_strategy": "class_balanced", "demo_order": "native"})) == frozenset()
    for strategy in ("nearest", "farthest", "similarity_band"):
        assert needs_encoder(Protocol.of({"demo_strategy": strategy})) and not needs_model_kernel(
            Protocol.of({"demo_strategy": strategy})
        )
    # bm25 and model_kernel select without the encoder; it removes the near-copies of their capped pool
    assert needs_bm25(Protocol.of({"demo_strategy": "bm25"})) and "encoder" not in needed_similarities(
        Protocol.of({"demo_strategy": "bm25"})
    )
    assert needs_model_kernel(Protocol.of({"demo_strategy": "model_kernel"})) and needs_encoder(
        Protocol.of({"demo_strategy": "model_kernel"})
    )
    assert needs_encoder(Protocol.of({"demo_strategy": "bm25"})) and not needs_encoder(
        Protocol.of({"demo_strategy": "class_balanced"})
    )
    # a sorted order needs the encoder whatever the strategy
    assert needs_encoder(Protocol.of({"demo_strategy": "random", "demo_order": "descending"}))
    assert needed_similarities(Protocol.of({"demo_strategy": "bm25", "demo_order": "ascending"})) == {"bm25", "encoder"}
    assert not needs_encoder(Protocol.of({"demo_strategy": "random", "order_seed": 3}))


# ---- bm25 -------------------------------------------------------------------------------------------


def test_bm25_scores_rank_the_exact_word_overlap_first():
    pool = [
        "the stock market fell sharply",
        "a charming and witty romantic comedy",
        "preheat the oven before baking",
        "an empty pool text ?",
    ]
    scores = bm25_similarity(["witty charming comedy", "zzz"], pool)
    assert scores.shape == (2, 4)
    assert int(np.argmax(scores[0])) == 1 and scores[0, 1] > 0 and np.all(scores[0, [0, 2, 3]] == 0)
    assert np.all(scores[1] == 0)  # no shared word: every score 0
    assert bm25_similarity([], pool).shape == (0, 4)


def test_bm25_strategy_puts_the_exact_overlap_last_and_records_scores(tokenizer):
    eval_table, pool = toy_tables(n_eval=12, n_pool=30)
    # one pool text shares three words with each test input, no other pool text shares any
    planted = pd.DataFrame(
        {"text": [f"zebra{i} quokka{i} narwhal{i} plus" for i in range(12)], "label": 1}, index=np.arange(800, 812)
    )
    eval_table["text"] = [f"a zebra{i} and quokka{i} or narwhal{i}" for i in range(12)]
    pool = pd.concat([pool, planted])
    meta, records = build(tokenizer, eval_table, pool, protocol={"demo_strategy": "bm25", "n_demos": 3})
    assert meta["strategy"] == "bm25" and meta["demo_similarity_kind"] == "bm25" and "dedup_similarity" not in meta
    for record in records:
        assert record["demos"][-1]["pool_index"] == 800 + record["test_index"]
        assert record["demo_similarity"] == sorted(record["demo_similarity"])
        expected = bm25_similarity([eval_table.loc[record["test_index"], "text"]], list(pool["text"]))[0]
        rows = {index: position for position, index in enumerate(pool.index)}
        assert np.allclose(record["demo_similarity"], [expected[rows[d["pool_index"]]] for d in record["demos"]])
        check_segment_map(tokenizer, meta, record, spec_with()["template"])


# ---- model kernel (injected provider) ----------------------------------------------------------------


def test_model_kernel_ranks_by_the_injected_provider_on_a_capped_pool(tokenizer):
    eval_table, pool = toy_tables()
    kernel = FakeKernel()
    protocol = {"demo_strategy": "model_kernel", "retrieval_pool_size": 12}
    meta, records = build(tokenizer, eval_table, pool, protocol=protocol, similarity_providers={"model_kernel": kernel})
    assert len(kernel.calls) == 1  # one call for the whole prompt set
    tests, pool_texts = kernel.calls[0]
    assert len(pool_texts) == 12 and meta["pool_size"] == 12 and meta["demo_similarity_kind"] == "model_kernel"
    assert tests == [eval_table.loc[r["test_index"], "text"] for r in records]
    for record in records:
        test_text = eval_table.loc[record["test_index"], "text"]
        scores = pd.Series({i: kernel.score(test_text, t) for i, t in zip(pool.index, pool["text"]) if t in pool_texts})
        expected = list(scores.sort_values(ascending=False, kind="stable").index[:4])[::-1]
        assert [d["pool_index"] for d in record["demos"]] == expected
        assert np.allclose(record["demo_similarity"], scores[expected].to_numpy())
    with pytest.raises(PromptError, match="no model_kernel similarity provider was given"):
        build(tokenizer, eval_table, pool, protocol=protocol)
    with pytest.raises(PromptError, match=r"returned shape \(1, 1\)"):
        build(
            tokenizer,
            eval_table,
            pool,
            protocol=protocol,
            similarity_providers={"model_kernel": lambda t, p: np.zeros((1, 1))},
        )


def test_an_injected_encoder_provider_replaces_the_embedding_function(tokenizer):
    eval_table, pool = toy_tables()
    embed = ToyEmbedding(list(eval_table["text"]) + list(pool["text"]))
    protocol = {"demo_strategy": "nearest"}
    via_embed = build(tokenizer, eval_table, pool, protocol=protocol, embed=embed)

    def cosines(test_texts, pool_texts):
        return np.array([[cosine(embed.vectors[t], embed.vectors[p]) for p in pool_texts] for t in test_texts])

    via_provider = build(tokenizer, eval_table, pool, protocol=protocol, similarity_providers={"encoder": cosines})
    assert [[d["pool_index"] for d in r["demos"]] for r in via_embed[1]] == [
        [d["pool_index"] for d in r["demos"]] for r in via_provider[1]
    ]
    with pytest.raises(PromptError, match="unknown similarity provider kind"):
        build(tokenizer, eval_table, pool, similarity_providers={"tfidf": cosines})


# ---- similarity bands ----------------------------------------------------------------------------------


def test_similarity_quantiles_rank_and_share_ties():
    assert np.allclose(similarity_quantiles(np.array([0.3, 0.1, 0.2, 0.5, 0.4])), [0.5, 0, 0.25, 1, 0.75])
    assert np.allclose(similarity_quantiles(np.array([1.0, 1.0, 0.0])), [0.75, 0.75, 0])
    assert np.allclose(similarity_quantiles(np.array([0.7])), [1.0])


@pytest.mark.parametrize("band", [(0.9, 1.0), (0.4, 0.6), (0.0, 0.2)])
def test_similarity_bands_draw_from_the_asked_quantile_range(tokenizer, band):
    eval_table, pool = toy_tables(n_eval=20, n_pool=60)
    embed = ToyEmbedding(list(eval_table["text"]) + list(pool["text"]))
    protocol = {"demo_strategy": "similarity_band", "similarity_band": list(band), "n_demos": 5}
    meta, records = build(tokenizer, eval_table, pool, protocol=protocol, embed=embed)
    assert meta["demo_similarity_kind"] == "encoder" and meta["dedup_similarity"] == 0.95
    lo, hi = band
    for record in records:
        test_vector = embed.vectors[eval_table.loc[record["test_index"], "text"]]
        cosines = pd.Series([cosine(test_vector, embed.vectors[t]) for t in pool["text"]], index=pool.index)
        cosines = cosines[cosines < 0.95]  # near-copies leave the pool first
        quantile = cosines.rank(method="average").sub(1).div(len(cosines) - 1)
        in_band = set(quantile[(quantile >= lo) & (quantile <= hi)].index)
        chosen = [d["pool_index"] for d in record["demos"]]
        assert len(set(chosen)) == 5 and set(chosen) <= in_band
        assert np.allclose(record["demo_similarity"], cosines[chosen].to_numpy(), atol=1e-5)
    # the band is drawn at random: different test points get different draws, bands differ in mean similarity
    assert len({tuple(sorted(d["pool_index"] for d in r["demos"])) for r in records}) > 1


def test_higher_bands_have_more_similar_demonstrations(tokenizer):
    eval_table, pool = toy_tables(n_eval=20, n_pool=60)
    embed = ToyEmbedding(list(eval_table["text"]) + list(pool["text"]))
    means = []
    for band in ([0.0, 0.2], [0.4, 0.6], [0.9, 1.0]):
        protocol = {"demo_strategy": "similarity_band", "similarity_band": band, "n_demos": 4}
        _, records = build(tokenizer, eval_table, pool, protocol=protocol, embed=embed)
        means.append(np.mean([np.mean(r["demo_similarity"]) for r in records]))
    assert means[0] < means[1] < means[2]
    with pytest.raises(PromptError, match=r"protocol.similarity_band \[0.99, 1.0\]: \d+ of the \d+ pool examples"):
        build(
            tokenizer,
            eval_table,
            pool,
            protocol={"demo_strategy": "similarity_band", "similarity_band": [0.99, 1.0], "n_demos": 4},
            embed=embed,
        )


# ---- numbers of demonstrations -------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("strategy", sorted(set(STRATEGIES) - {"first_k_for_test"}))
@pytest.mark.parametrize("n_demos", [0, 1, 6])
def test_n_demos_sweeps_work_with_every_strategy(tokenizer, strategy, n_demos):
    eval_table, pool = toy_tables(n_eval=10, n_pool=40)
    embed = ToyEmbedding(list(eval_table["text"]) + list(pool["text"]))
    protocol = {"demo_strategy": strategy, "n_demos": n_demos, "similarity_band": [0.0, 1.0]}
    meta, records = build(
        tokenizer, eval_table, pool, protocol=protocol, embed=embed, similarity_providers={"model_kernel": FakeKernel()}
    )
    assert meta["n_demos"] == n_demos
    for record in records:
        assert record["n_demos"] == len(record["demos"]) == n_demos
        assert len({d["pool_index"] for d in record["demos"]}) == n_demos
        check_segment_map(tokenizer, meta, record, spec_with()["template"])


# ---- order ---------------------------------------------------------------------------------------------


def _sets_and_orders(records):
    return [[d["pool_index"] for d in r["demos"]] for r in records]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["random", "class_balanced", "nearest", "bm25", "model_kernel"])
def test_demo_order_and_order_seed_never_change_the_set(tokenizer, strategy):
    eval_table, pool = toy_tables(n_eval=16, n_pool=40)
    embed = ToyEmbedding(list(eval_table["text"]) + list(pool["text"]))
    providers = {"model_kernel": FakeKernel()}
    base = {"demo_strategy": strategy, "n_demos": 6}
    _, native = build(tokenizer, eval_table, pool, protocol=base, embed=embed, similarity_providers=providers)
    reference = _sets_and_orders(native)
    for overrides in ({"demo_order": "ascending"}, {"demo_order": "descending"}, {"order_seed": 1}, {"order_seed": 2}):
        meta, records = build(
            tokenizer, eval_table, pool, protocol=base | overrides, embed=embed, similarity_providers=providers
        )
        orders = _sets_and_orders(records)
        assert [sorted(o) for o in orders] == [sorted(o) for o in reference]  # the same set, as a set
        if overrides != {"demo_order": "ascending"} or strategy != "nearest":  # nearest's native order is ascending
            assert orders != reference  # in another order (for some test point)
        for record in records:
            assert [d["label"] for d in record["demos"]] == [
                pool.loc[d["pool_index"], "label"] for d in record["demos"]
            ]
            check_segment_map(tokenizer, meta, record, spec_with()["template"])
        if "demo_order" in overrides:
            assert meta["demo_similarity_kind"] == (
                "encoder" if strategy in ("random", "class_balanced", "nearest") else strategy
            )
            for record in records:
                test_vector = embed.vectors[eval_table.loc[record["test_index"], "text"]]
                values = [cosine(test_vector, embed.vectors[d["text"]]) for d in record["demos"]]
                assert values == sorted(values, reverse=overrides["demo_order"] == "descending")
    # two order seeds: two different permutations of the same set; the same seed again: the same permutation
    _, one = build(
        tokenizer, eval_table, pool, protocol=base | {"order_seed": 1}, embed=embed, similarity_providers=providers
    )
    _, two = build(
        tokenizer, eval_table, pool, protocol=base | {"order_seed": 2}, embed=embed, similarity_providers=providers
    )
    _, again = build(
        tokenizer, eval_table, pool, protocol=base | {"order_seed": 1}, embed=embed, similarity_providers=providers
    )
    assert _sets_and_orders(one) != _sets_and_orders(two) and _sets_and_orders(one) == _sets_and_orders(again)


def _triples(record):
    return sorted((d["label_pool_index"], d["pool_index"], d["text"], d["label"]) for d in record["demos"])


@pytest.mark.parametrize(
    "controls",
    [{"labels": "noisy", "label_noise": 0.5}, {"labels": "random"}, {"inputs": "permuted"}],
    ids=["noisy", "random", "permuted"],
)
def test_orderings_of_a_noisy_or_permuted_condition_show_the_same_pairs(tokenizer, controls):
    """Label and input controls are applied by pool index before reordering (audit 2, M4): two order seeds and a
    sorted order of one condition show the same (slot row, input, shown label) pairs, only in another order."""
    eval_table, pool = toy_tables(n_eval=16, n_pool=40)
    embed = ToyEmbedding(list(eval_table["text"]) + list(pool["text"]))
    base = {"n_demos": 8} | controls
    _, native = build(tokenizer, eval_table, pool, protocol=base)
    for overrides in ({"order_seed": 1}, {"order_seed": 2}, {"demo_order": "descending"}):
        _, records = build(tokenizer, eval_table, pool, protocol=base | overrides, embed=embed)
        assert _sets_and_orders(records) != _sets_and_orders(native)  # reordered for some test point
        for one, other in zip(native, records):
            assert _triples(one) == _triples(other), (overrides, one["test_index"])


def test_nearest_native_order_is_ascending_and_a_sorted_order_needs_the_encoder(tokenizer):
    eval_table, pool = toy_tables()
    embed = ToyEmbedding(list(eval_table["text"]) + list(pool["text"]))
    _, native = build(tokenizer, eval_table, pool, protocol={"demo_strategy": "nearest"}, embed=embed)
    _, ascending = build(
        tokenizer, eval_table, pool, protocol={"demo_strategy": "nearest", "demo_order": "ascending"}, embed=embed
    )
    assert _sets_and_orders(native) == _sets_and_orders(ascending)
    with pytest.raises(PromptError, match="protocol.demo_order 'descending' needs sentence embeddings"):
        build(tokenizer, eval_table, pool, protocol={"demo_order": "descending"})
    with pytest.raises(ConfigError, match="protocol.order_seed 1 permutes the native order"):
        build(tokenizer, eval_table, pool, protocol={"order_seed": 1, "demo_order": "ascending"}, embed=embed)


def test_order_settings_use_their_own_seed_stream(tokenizer):
    """The paper's random draw is unchanged by the condition keys: same prompts as Generator([seed, i]) gives."""
    eval_table, pool = toy_tables()
    _, records = build(tokenizer, eval_table, pool, protocol={"order_seed": 5})
    for record in records:
        rng = np.random.default_rng([PROTOCOL["seed"], record["test_index"]])
        expected = STRATEGIES["random"](eval_table.loc[record["test_index"]], pool, PROTOCOL["n_demos"], rng)
        assert sorted(d["pool_index"] for d in record["demos"]) == sorted(expected)


# ---- protocol keys: defaults and errors ----------------------------------------------------------------


def test_every_new_protocol_key_has_a_schema_default_with_a_description():
    schema = yaml.safe_load(Path(SCHEMA_PATH).read_text())
    properties = schema["properties"]["protocol"]["properties"]
    defaults = defaults_for("protocol")
    for key in NEW_KEYS:
        assert key in defaults, key
        assert properties[key].get("description"), key
    assert set(properties["demo_strategy"]["enum"]) == set(STRATEGIES) - {"first_k_for_test"}
    assert not config_errors({"protocol": defaults}, {**schema, "required": []})


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("similarity_band", [0.6, 0.4]),
        ("similarity_band", [0.2, 1.5]),
        ("demo_order", "sideways"),
        ("order_seed", -1),
        ("labels", "inverted"),
        ("label_noise", 1.5),
        ("abstract_labels", [" A", " A"]),
        ("inputs", "shuffled"),
        ("test_inputs", "emoji"),
        ("typo_rate", -0.1),
        ("rare_word_rate", 2),
        ("rare_word_gap", -1),
        ("demo_strategy", "oracle"),
    ],
)
def test_a_bad_value_names_the_protocol_key(tokenizer, key, value):
    eval_table, pool = toy_tables()
    with pytest.raises(ConfigError, match=rf"protocol\.{key}"):
        build(tokenizer, eval_table, pool, protocol={key: value})
    schema = yaml.safe_load(Path(SCHEMA_PATH).read_text())
    errors = config_errors({"protocol": {key: value}}, schema)
    if (key, value) != ("similarity_band", [0.6, 0.4]):  # lo < hi: only Protocol.problems can tell
        assert any(line.startswith(f"config key protocol.{key}") for line in errors), errors


@pytest.mark.parametrize(
    ("overrides", "culprit"),
    [
        ({"inputs": "other_task"}, "protocol.other_task"),
        ({"test_inputs": "rewrites"}, "protocol.rewrites_file"),
        ({"labels": "abstract", "abstract_labels": [" A"]}, "protocol.abstract_labels"),
        ({"no_such_key": 1}, "protocol.no_such_key"),
    ],
)
def test_incomplete_conditions_name_the_missing_key(tokenizer, overrides, culprit):
    eval_table, pool = toy_tables()
    with pytest.raises(ConfigError, match=culprit.replace(".", r"\.")):
        build(tokenizer, eval_table, pool, protocol=overrides)
