"""Retrieval strategies nearest/farthest: toy embeddings (exact ranking and order), the real MiniLM, workflow wiring."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
from helpers import PROTOCOL, ToyEmbedding, check_segment_map, cosine, gpt2_style_tokenizer, spec_with, toy_tables

from kicl.data.encoders import encoder_embed_function
from kicl.prompts.build import PromptError, PromptTables, build_prompt_set
from kicl.prompts.files import read_prompt_records as read_prompts
from kicl.prompts.options import Protocol
from kicl.prompts.retrieval import cap_pool, encoder_similarity
from kicl.prompts.strategies import STRATEGIES

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return gpt2_style_tokenizer(tmp_path_factory.mktemp("bpe"))


def build_toy(tokenizer, eval_table, pool, protocol: dict, similarities=None):
    """The prompt set of the toy task under ``protocol`` (a protocol section), with ``similarities`` if given."""
    return build_prompt_set(
        "toy", spec_with(), "m", tokenizer, PromptTables(eval_table, pool), Protocol.of(protocol), None, similarities
    )


@pytest.mark.parametrize("strategy", ["nearest", "farthest"])
def test_toy_embeddings_give_top_or_bottom_k_by_cosine_in_ascending_order(tokenizer, strategy):
    eval_table, pool = toy_tables()
    embed = ToyEmbedding(list(eval_table["text"]) + list(pool["text"]))
    protocol = PROTOCOL | {"demo_strategy": strategy, "retrieval_encoder": "toy"}
    meta, records = build_toy(tokenizer, eval_table, pool, protocol, {"encoder": encoder_similarity(embed)})
    assert embed.calls == 1 and meta["strategy"] == strategy and meta["retrieval_encoder"] == "toy"
    assert len(records) == 12
    for record in records:
        test_vector = embed.vectors[eval_table.loc[record["test_index"], "text"]]
        cosines = pd.Series([cosine(test_vector, embed.vectors[t]) for t in pool["text"]], index=pool.index)
        cosines = cosines[cosines < protocol["dedup_similarity"]]  # near-copies of the test input are never demos
        ranked = cosines.sort_values(ascending=(strategy == "farthest"))
        expected = list(ranked.index[:4])
        if strategy == "nearest":
            expected = expected[::-1]  # most similar last, next to the test input
        assert [d["pool_index"] for d in record["demos"]] == expected
        assert np.allclose(record["demo_similarity"], cosines[expected].to_numpy(), atol=1e-5)
        assert record["demo_similarity"] == sorted(record["demo_similarity"])
        check_segment_map(tokenizer, meta, record, spec_with()["template"])


def word_overlap_kernel(test_texts, pool_texts):
    """A model_kernel provider: Jaccard overlap of lower-cased words (a near-copy ranks first)."""

    def words(text):
        return set("".join(c if c.isalnum() else " " for c in text.lower()).split())

    return np.array([[len(words(t) & words(p)) / len(words(t) | words(p)) for p in pool_texts] for t in test_texts])


@pytest.mark.parametrize("strategy", ["random", "class_balanced", "nearest", "farthest", "bm25", "model_kernel"])
def test_the_test_input_and_its_near_copies_never_serve_as_its_demonstrations(tokenizer, strategy):
    """Exact copies, copies up to case and punctuation (every strategy) and encoder near-copies (the ranking
    strategies, bm25 and model_kernel included: audit 2, L4) of the test input never become its demonstrations."""
    eval_table, pool = toy_tables(n_eval=6, n_pool=12)
    labels = eval_table["label"].to_numpy()
    copies = pd.DataFrame({"text": list(eval_table["text"]), "label": labels}, index=np.arange(900, 906))
    case_text = {text: f"{text.upper()} !!" for text in eval_table["text"]}  # differs only in case and punctuation
    case_copies = pd.DataFrame({"text": list(case_text.values()), "label": labels}, index=np.arange(920, 926))
    near_text = {text: f"{text} (near copy)" for text in eval_table["text"]}
    near = pd.DataFrame({"text": list(near_text.values()), "label": labels}, index=np.arange(950, 956))
    pool = pd.concat([pool, copies, case_copies, near])
    embed = ToyEmbedding(list(pool["text"]))
    for text, copy in near_text.items():  # cosine 0.99 with its test input, below 0.95 with the others (toy)
        embed.vectors[copy] = embed.vectors[text] + 0.1 * np.linalg.norm(embed.vectors[text]) * np.eye(5)[0]
    protocol = PROTOCOL | {"demo_strategy": strategy, "n_select": 4, "n_heldout": 2, "n_demos": 10}
    meta, records = build_toy(
        tokenizer,
        eval_table,
        pool,
        protocol,
        {"encoder": encoder_similarity(embed)} | {"model_kernel": word_overlap_kernel},
    )
    ranking = strategy not in ("random", "class_balanced")
    assert meta["near_copy_filter"] == ("normalised_text+encoder" if ranking else "normalised_text")
    for record in records:
        test_text = eval_table.loc[record["test_index"], "text"]
        demo_texts = [d["text"] for d in record["demos"]]
        assert test_text not in demo_texts and case_text[test_text] not in demo_texts
        if ranking:
            assert near_text[test_text] not in demo_texts
        if strategy in ("nearest", "farthest"):
            assert max(record["demo_similarity"]) < protocol["dedup_similarity"]
        check_segment_map(tokenizer, meta, record, spec_with()["template"])
    assert meta["n_prompts_with_pool_copies_removed"] == 6
    assert meta["pool_test_copies_removed"] >= (18 if ranking else 12)
    if strategy == "nearest":  # the near copies would otherwise be the most similar demonstrations
        assert all(cosine(embed.vectors[near_text[t]], embed.vectors[t]) > 0.99 for t in eval_table["text"])


def test_a_pool_without_copies_leaves_the_prompts_unchanged(tokenizer):
    """The copy check is a no-op when no pool text equals a test text: same draws as on the whole pool."""
    eval_table, pool = toy_tables()
    meta, records = build_toy(tokenizer, eval_table, pool, PROTOCOL)
    assert meta["pool_test_copies_removed"] == 0 and meta["n_prompts_with_pool_copies_removed"] == 0
    for record in records:
        rng = np.random.default_rng([PROTOCOL["seed"], record["test_index"]])
        expected = STRATEGIES["random"](eval_table.loc[record["test_index"]], pool, PROTOCOL["n_demos"], rng)
        assert [d["pool_index"] for d in record["demos"]] == list(expected)


def test_strategies_on_given_similarities_and_their_errors():
    pool = pd.DataFrame({"text": list("abcde"), "label": [0, 1, 0, 1, 0]}, index=[100, 101, 102, 103, 104])
    test = pd.Series({"text": "x", "label": 0})
    similarities = np.array([0.1, 0.9, 0.5, -0.3, 0.7])
    assert list(STRATEGIES["nearest"](test, pool, 3, None, similarities=similarities)) == [102, 104, 101]
    assert list(STRATEGIES["farthest"](test, pool, 3, None, similarities=similarities)) == [103, 100, 102]
    with pytest.raises(PromptError, match="needs the test input's similarity"):
        STRATEGIES["nearest"](test, pool, 3, None)
    with pytest.raises(PromptError, match="6 demonstrations requested but the demonstration pool has 5"):
        STRATEGIES["farthest"](test, pool, 6, None, similarities=similarities)


def test_retrieval_without_embeddings_stops_and_random_path_ignores_them(tokenizer):
    eval_table, pool = toy_tables()
    with pytest.raises(PromptError, match="protocol.demo_strategy 'nearest' needs sentence embeddings"):
        build_toy(tokenizer, eval_table, pool, PROTOCOL | {"demo_strategy": "nearest"})
    embed = ToyEmbedding(list(eval_table["text"]) + list(pool["text"]))
    plain = build_toy(tokenizer, eval_table, pool, PROTOCOL)
    given = build_toy(tokenizer, eval_table, pool, PROTOCOL, {"encoder": encoder_similarity(embed)})
    assert plain == given and embed.calls == 0 and "demo_similarity" not in plain[1][0]


def test_pool_cap_is_a_seeded_subsample_used_for_every_prompt(tokenizer):
    eval_table, pool = toy_tables()
    assert cap_pool(pool, None, 0) is pool and cap_pool(pool, 99, 0) is pool
    capped = cap_pool(pool, 10, 0)
    assert len(capped) == 10 and capped.index.is_monotonic_increasing and capped.equals(cap_pool(pool, 10, 0))
    assert not capped.index.equals(cap_pool(pool, 10, 1).index)
    embed = ToyEmbedding(list(eval_table["text"]) + list(pool["text"]))
    protocol = PROTOCOL | {"demo_strategy": "nearest", "retrieval_pool_size": 10}
    meta, records = build_toy(tokenizer, eval_table, pool, protocol, {"encoder": encoder_similarity(embed)})
    assert meta["pool_size"] == 10 and meta["retrieval_pool_size"] == 10
    assert {d["pool_index"] for r in records for d in r["demos"]} <= set(capped.index)


@pytest.mark.slow
def test_real_minilm_ranks_paraphrases_nearest_and_unrelated_farthest(minilm_dir, tokenizer, tmp_path):
    manifest = tmp_path / "minilm.json"
    manifest.write_text(json.dumps({"name": "all-minilm-l6-v2", "path": str(minilm_dir), "device": "cpu"}))
    pool = pd.DataFrame(
        {
            "text": [
                "I loved this film, it was great.",
                "The stock market fell sharply today.",
                "A delightful and touching movie.",
                "How many legs does a spider have?",
                "Preheat the oven to 200 degrees.",
            ],
            "label": [1, 0, 1, 0, 0],
        }
    )
    eval_table = pd.DataFrame({"text": ["The movie was wonderful and moving."], "label": [1]})
    embed = encoder_embed_function(manifest)
    base = PROTOCOL | {"n_demos": 2, "n_select": 0, "n_heldout": 1}
    _, (near,) = build_toy(
        tokenizer, eval_table, pool, base | {"demo_strategy": "nearest"}, {"encoder": encoder_similarity(embed)}
    )
    _, (far,) = build_toy(
        tokenizer, eval_table, pool, base | {"demo_strategy": "farthest"}, {"encoder": encoder_similarity(embed)}
    )
    assert {d["pool_index"] for d in near["demos"]} == {0, 2}
    assert {d["pool_index"] for d in far["demos"]} <= {1, 3, 4}
    assert near["demo_similarity"][0] < near["demo_similarity"][1] and min(near["demo_similarity"]) > max(
        far["demo_similarity"]
    )


def _dry_run_build_prompts(run_workflow, tmp_path, protocol, encoders=()):
    overrides = {
        "run": {"tasks": ["trec"], "models": ["smollm2-135m"], "encoders": list(encoders), "conditions": ["paper"]},
        "protocol": protocol,
    }
    result = run_workflow(tmp_path, overrides, ["results/prompts/smollm2-135m/trec/paper/prompts.jsonl", "-n"])
    return result, result.stdout + result.stderr


def test_encoder_manifest_is_a_prompt_input_only_when_the_protocol_needs_it(run_workflow, tmp_path):
    without = ({"demo_strategy": "random"}, {"demo_strategy": "class_balanced"})
    for number, protocol in enumerate(without):
        result, output = _dry_run_build_prompts(run_workflow, tmp_path / f"without{number}", protocol)
        assert result.returncode == 0, output[-3000:]
        assert "rule build_prompts" in output and "resources/encoders/" not in output
    with_encoder = (
        {"demo_strategy": "nearest"},
        {"demo_strategy": "farthest"},
        {"demo_strategy": "similarity_band"},
        {"demo_strategy": "random", "demo_order": "descending"},
        {"demo_strategy": "bm25"},  # the encoder removes near-copies of the test input from its capped pool
    )
    for number, protocol in enumerate(with_encoder):
        # the retrieval encoder need not be among run.encoders (the Table 2 encoder rows)
        result, output = _dry_run_build_prompts(run_workflow, tmp_path / f"with{number}", protocol)
        assert result.returncode == 0, output[-3000:]
        assert "rule encoder_manifest" in output and "resources/encoders/all-minilm-l6-v2.json" in output


def test_unknown_retrieval_encoder_stops_before_any_job_naming_the_key(run_workflow, tmp_path):
    result, output = _dry_run_build_prompts(
        run_workflow, tmp_path, {"demo_strategy": "nearest", "retrieval_encoder": "no-such-encoder"}
    )
    assert result.returncode != 0
    assert "protocol.retrieval_encoder: 'no-such-encoder' is not in the encoders catalog" in output
    assert "rule " not in output and "Job stats" not in output


def test_build_prompts_rule_retrieves_with_the_packaged_minilm(
    run_workflow, tmp_path, smollm2_dir, minilm_dir, wheel_cache, monkeypatch
):
    """prepare_task + model/encoder manifests + build_prompts with nearest retrieval over a capped pool."""
    monkeypatch.setenv("KICL_WHEEL_CACHE", str(wheel_cache))
    overrides = {
        "run": {"tasks": ["trec"], "models": ["smollm2-135m"], "encoders": []},
        "models": {"smollm2-135m": {"source": "local", "local": {"path": str(smollm2_dir)}}},
        "encoders": {"minilm-local": {"source": "local", "local": {"path": str(minilm_dir)}}},
        "protocol": {
            "n_select": 3,
            "n_heldout": 2,
            "n_demos": 3,
            "demo_strategy": "nearest",
            "retrieval_encoder": "minilm-local",
            "retrieval_pool_size": 40,
        },
    }
    targets = [
        "results/prompts/smollm2-135m/trec/paper/meta.json",
        "results/prompts/smollm2-135m/trec/paper/prompts.jsonl",
    ]
    result = run_workflow(tmp_path, overrides, targets)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    meta = json.loads((result.workdir / targets[0]).read_text())
    records = read_prompts(result.workdir / targets[1])
    assert meta["strategy"] == "nearest" and meta["retrieval_encoder"] == "minilm-local" and meta["pool_size"] == 40
    assert len(records) == 5
    for record in records:
        assert len(record["demos"]) == 3 and record["demo_similarity"] == sorted(record["demo_similarity"])
