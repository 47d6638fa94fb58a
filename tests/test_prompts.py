"""Prompts with segment maps: exact spans for two tokenizer families, seeds, verbalizer and length checks."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
from helpers import PROTOCOL, SENTENCES, check_segment_map, default_config, gpt2_style_tokenizer, spec_with

from kicl.prompts.build import (
    Demo,
    PieceTokenizer,
    PromptError,
    PromptPaths,
    PromptTables,
    VerbalizerError,
    build_prompt,
    build_prompt_files,
    build_prompt_set,
    query_ids,
    render_query,
    select_eval_points,
)
from kicl.prompts.files import read_prompt_records as read_prompts
from kicl.prompts.options import Protocol
from kicl.prompts.strategies import STRATEGIES, register_strategy

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def bos_tokenizer(folder):
    """The GPT-2-style tokenizer with a post-processor that prepends <s> (like Llama/Gemma tokenizers)."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    base = gpt2_style_tokenizer(folder)
    backend = base.backend_tokenizer
    backend.add_special_tokens(["<s>"])
    bos = backend.token_to_id("<s>")
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="<|endoftext|>")


def llama2_style_tokenizer(folder):
    """A SentencePiece-style BPE like Llama-2's (Metaspace '▁' word marker prepended to a text, byte fallback,
    <s> added), trained offline: decoding drops the marker of a text's first token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tokenizer.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    corpus = SENTENCES * 3 + ["Input: x Output: Positive Output: Negative Premise: Hypothesis: Yes Maybe No"] * 30
    trainer = trainers.BpeTrainer(vocab_size=1000, special_tokens=["<unk>", "<s>", *byte_tokens])
    tokenizer.train_from_iterator(corpus, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tokenizer.token_to_id("<s>"))]
    )
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", unk_token="<unk>")
    wrapped.save_pretrained(folder)
    return PreTrainedTokenizerFast.from_pretrained(folder)


#: tokenizers whose tokens decode on their own exactly (byte-level); the others decode exactly in context
STANDALONE = {"smollm2", "gpt2_bpe", "bpe_with_bos"}


@pytest.fixture(scope="module")
def tokenizers(smollm2_dir, tmp_path_factory):
    from transformers import AutoTokenizer

    return {
        "smollm2": AutoTokenizer.from_pretrained(smollm2_dir),
        "gpt2_bpe": gpt2_style_tokenizer(tmp_path_factory.mktemp("bpe")),
        "bpe_with_bos": bos_tokenizer(tmp_path_factory.mktemp("bos")),
        "llama2_style": llama2_style_tokenizer(tmp_path_factory.mktemp("sp")),
    }


def toy_task(n_eval=30, n_pool=40, seed=0):
    """Eval/pool tables of a binary task whose texts cover spaces, unicode and punctuation."""
    rng = np.random.default_rng(seed)
    make = lambda n: pd.DataFrame(  # noqa: E731
        {"text": [SENTENCES[i % len(SENTENCES)].strip() for i in range(n)], "label": rng.integers(0, 2, n)}
    )
    return make(n_eval), make(n_pool)


@pytest.mark.parametrize("family", ["smollm2", "gpt2_bpe", "bpe_with_bos", "llama2_style"])
def test_spans_decode_exactly_to_input_label_and_delimiter(tokenizers, family):
    tokenizer = tokenizers[family]
    eval_table, pool = toy_task()
    spec = spec_with()
    meta, records = build_prompt_set(
        "toy", spec, family, tokenizer, PromptTables(eval_table, pool), Protocol.of(PROTOCOL), None
    )
    assert meta["special_prefix_ids"] == (
        [tokenizer.bos_token_id] if family in ("bpe_with_bos", "llama2_style") else []
    )
    assert len(records) == 12 and [r["prompt_id"] for r in records] == list(range(12))
    assert [r["split"] for r in records] == ["select"] * 8 + ["heldout"] * 4
    for record in records:
        assert record["gold"] == eval_table.loc[record["test_index"], "label"]
        assert len(record["demos"]) == 4
        for demo in record["demos"]:
            assert (
                demo["text"] == pool.loc[demo["pool_index"], "text"]
                and demo["label"] == pool.loc[demo["pool_index"], "label"]
            )
        check_segment_map(tokenizer, meta, record, spec["template"], standalone=family in STANDALONE)


@pytest.mark.parametrize("family", ["smollm2", "gpt2_bpe", "llama2_style"])
def test_pair_template_spans_cover_premise_and_hypothesis(tokenizers, family):
    tokenizer = tokenizers[family]
    mnli = dict(default_config()["tasks"]["mnli"])
    rng = np.random.default_rng(1)
    table = pd.DataFrame(
        {
            "premise": [SENTENCES[i % 10] for i in range(20)],
            "hypothesis": [SENTENCES[(i * 3) % 10] for i in range(20)],
            "label": rng.integers(0, 3, 20),
        }
    )
    from kicl.data.tasks import render_text

    table["text"] = [render_text(mnli["template"], row) for _, row in table.iterrows()]
    meta, records = build_prompt_set(
        "mnli", mnli, family, tokenizer, PromptTables(table, table.copy()), Protocol.of(PROTOCOL | {"n_demos": 3}), None
    )
    for record in records:
        check_segment_map(tokenizer, meta, record, mnli["template"], standalone=family in STANDALONE)
        assert "\nHypothesis: " in record["test_text"]


def test_seed_makes_prompts_identical_and_per_test_point(tokenizers):
    tokenizer = tokenizers["smollm2"]
    eval_table, pool = toy_task(n_eval=60)
    spec = spec_with()
    _, first = build_prompt_set(
        "toy", spec, "m", tokenizer, PromptTables(eval_table, pool), Protocol.of(PROTOCOL), None
    )
    _, again = build_prompt_set(
        "toy", spec, "m", tokenizer, PromptTables(eval_table, pool), Protocol.of(PROTOCOL), None
    )
    _, other = build_prompt_set(
        "toy", spec, "m", tokenizer, PromptTables(eval_table, pool), Protocol.of(PROTOCOL | {"seed": 1}), None
    )
    assert first == again
    assert [r["test_index"] for r in first] != [r["test_index"] for r in other]
    # a test point's demonstrations do not depend on how many other prompts are built
    _, more = build_prompt_set(
        "toy", spec, "m", tokenizer, PromptTables(eval_table, pool), Protocol.of(PROTOCOL | {"n_select": 30}), None
    )
    by_index = {r["test_index"]: r["input_ids"] for r in more}
    shared = [r for r in first if r["test_index"] in by_index]
    assert shared and all(by_index[r["test_index"]] == r["input_ids"] for r in shared)


def test_multi_token_verbalizers_stop_with_the_offending_words(tokenizers):
    tokenizer = tokenizers["smollm2"]
    eval_table, pool = toy_task()
    spec = spec_with(verbalizers=(" Negative", " Abbreviation", " Entailment"))
    spec["label_names"] = ["a", "b", "c"]
    with pytest.raises(VerbalizerError) as error:
        build_prompt_set(
            "toy", spec, "smollm2-135m", tokenizer, PromptTables(eval_table, pool), Protocol.of(PROTOCOL), None
        )
    message = str(error.value)
    assert "task 'toy', model 'smollm2-135m'" in message
    assert "' Abbreviation'" in message and "' Entailment'" in message and "' Negative'" not in message
    assert "protocol.readout: first_token" in message


def test_first_token_readout_scores_first_tokens_and_rejects_clashes(tokenizers):
    tokenizer = tokenizers["smollm2"]
    eval_table, pool = toy_task()
    spec = spec_with(verbalizers=(" Abbreviation", " Entailment"))
    meta, records = build_prompt_set(
        "toy",
        spec,
        "m",
        tokenizer,
        PromptTables(eval_table, pool),
        Protocol.of(PROTOCOL | {"readout": "first_token"}),
        None,
    )
    assert meta["readout"] == "first_token"
    assert meta["label_token_ids"] == [
        tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in spec["verbalizers"]
    ]
    for record in records:
        for demo in record["demos"]:
            start, end = demo["label_span"]
            assert start == demo["label_pos"] and end - start > 1
            assert tokenizer.decode(record["input_ids"][start:end]) == spec["verbalizers"][demo["label"]]
    clash = spec_with(verbalizers=(" Entailment", " Entailments"))  # both start with " Ent"
    with pytest.raises(VerbalizerError, match="share their first token"):
        build_prompt_set(
            "toy",
            clash,
            "m",
            tokenizer,
            PromptTables(eval_table, pool),
            Protocol.of(PROTOCOL | {"readout": "first_token"}),
            None,
        )


def test_context_length_error_or_drop_from_the_front(tokenizers):
    tokenizer = tokenizers["smollm2"]
    eval_table, pool = toy_task()
    spec = spec_with()
    _, full = build_prompt_set("toy", spec, "m", tokenizer, PromptTables(eval_table, pool), Protocol.of(PROTOCOL), None)
    limit = int(np.median([len(r["input_ids"]) for r in full]))
    with pytest.raises(PromptError, match=r"task 'toy', model 'm': prompt \d+ \(test_index \d+\) has \d+ tokens"):
        build_prompt_set("toy", spec, "m", tokenizer, PromptTables(eval_table, pool), Protocol.of(PROTOCOL), limit)
    meta, dropped = build_prompt_set(
        "toy",
        spec,
        "m",
        tokenizer,
        PromptTables(eval_table, pool),
        Protocol.of(PROTOCOL | {"context_policy": "drop"}),
        limit,
    )
    assert meta["n_prompts_with_dropped_demos"] > 0
    for before, after in zip(full, dropped):
        assert len(after["input_ids"]) <= limit
        kept = len(after["demos"])
        assert [d["pool_index"] for d in after["demos"]] == [d["pool_index"] for d in before["demos"]][4 - kept :]
        check_segment_map(tokenizer, meta, after, spec["template"])
    with pytest.raises(PromptError, match="more than the model's context length 5"):
        build_prompt_set(
            "toy",
            spec,
            "m",
            tokenizer,
            PromptTables(eval_table, pool),
            Protocol.of(PROTOCOL | {"context_policy": "drop"}),
            5,
        )


def test_class_balanced_strategy_and_the_strategy_registry():
    pool = pd.DataFrame({"text": [f"t{i}" for i in range(30)], "label": np.arange(30) % 3}, index=np.arange(100, 130))
    test = pd.Series({"text": "x", "label": 0})
    for seed in range(5):
        chosen = STRATEGIES["class_balanced"](test, pool, 8, np.random.default_rng(seed), n_classes=3)
        counts = np.bincount(pool.loc[chosen, "label"], minlength=3)
        assert len(set(chosen)) == 8 and sorted(counts) == [2, 3, 3]
    assert set(STRATEGIES["random"](test, pool, 30, np.random.default_rng(0))) == set(pool.index)

    @register_strategy("first_k_for_test")
    def first_k(test, pool, k, rng, **options):
        return pool.index.to_numpy()[:k]

    try:
        assert list(STRATEGIES["first_k_for_test"](test, pool, 2, None)) == [100, 101]
    finally:
        del STRATEGIES["first_k_for_test"]


def test_eval_points_are_capped_with_the_held_out_set_first():
    indices, splits, report = select_eval_points(872, 700, 300, seed=0)
    assert report == {
        "n_select_requested": 700,
        "n_heldout_requested": 300,
        "n_select": 572,
        "n_heldout": 300,
        "eval_size": 872,
        "capped": True,
    }
    assert len(set(indices)) == 872 and list(splits).count("heldout") == 300
    indices, splits, report = select_eval_points(50, 10, 5, seed=0)
    assert not report["capped"] and len(indices) == 15 and len(set(indices)) == 15


def test_render_query_matches_the_test_part_of_a_prompt(tokenizers):
    tokenizer = tokenizers["bpe_with_bos"]
    template = spec_with()["template"]
    assert render_query(template, "a fine film") == "Input: a fine film\nOutput:"
    pieces = PieceTokenizer(tokenizer)
    prompt = build_prompt(pieces, template, [" Negative", " Positive"], [Demo(0, 1, "good")], "a fine film")
    ids = query_ids(tokenizer, template, "a fine film")
    assert ids[0] == tokenizer.bos_token_id
    assert ids[1:] == prompt["input_ids"][prompt["demos"][0]["block_span"][1] :]
    assert tokenizer.decode(ids[1:]) == render_query(template, "a fine film")


def test_template_with_a_trailing_space_before_the_label_is_rejected(tokenizers):
    eval_table, pool = toy_task()
    spec = spec_with(template={"output_prefix": "\nOutput: "})
    with pytest.raises(PromptError, match="output_prefix '\\\\nOutput: ' ends with a space"):
        build_prompt_set(
            "toy", spec, "m", tokenizers["smollm2"], PromptTables(eval_table, pool), Protocol.of(PROTOCOL), None
        )


def test_build_prompt_files_follow_the_contract(tokenizers, smollm2_dir, tmp_path):
    from kicl.data.models import write_model_manifest
    from kicl.data.tasks import prepare_split

    spec = spec_with()
    spec["source"], spec["local"] = "local", {"dir": str(tmp_path), "pattern": "{split}.jsonl"}
    eval_table, pool = toy_task()
    pool.loc[3, "text"] = "  "  # empty texts are dropped from the demonstration pool
    for split, table in (("validation", eval_table), ("train", pool)):
        table.rename(columns={"text": "sentence"}).to_json(tmp_path / f"{split}.jsonl", orient="records", lines=True)
        prepare_split(
            "toy", spec | {"template": dict(spec["template"], text="{sentence}")}, split, tmp_path / f"{split}.parquet"
        )
    spec["template"] = dict(spec["template"], text="{sentence}")
    manifest = write_model_manifest(
        "smollm2-135m", {"source": "local", "local": {"path": str(smollm2_dir)}}, tmp_path / "model.json"
    )
    meta = build_prompt_files(
        "toy",
        spec,
        "smollm2-135m",
        PromptPaths(
            tmp_path / "model.json",
            tmp_path / "validation.parquet",
            tmp_path / "train.parquet",
            tmp_path / "out/meta.json",
            tmp_path / "out/prompts.jsonl",
        ),
        Protocol.of(PROTOCOL | {"n_select": 100, "n_heldout": 100}),
    )
    on_disk = json.loads((tmp_path / "out/meta.json").read_text())
    assert on_disk == meta
    for key in (
        "task",
        "model",
        "label_names",
        "verbalizers",
        "label_token_ids",
        "readout",
        "template",
        "n_demos",
        "seed",
        "strategy",
        "tokenizer",
        "n_select",
        "n_heldout",
        "eval_split",
        "demo_split",
    ):
        assert key in meta, key
    assert meta["tokenizer"] == manifest["path"] and meta["max_length"] == 8192
    assert meta["capped"] and meta["n_heldout"] == 30 and meta["n_select"] == 0 and meta["pool_size"] == 39
    records = read_prompts(tmp_path / "out/prompts.jsonl")
    assert len(records) == 30
    for record in records:
        assert set(record) >= {
            "prompt_id",
            "split",
            "test_index",
            "gold",
            "text",
            "input_ids",
            "test_text",
            "test_span",
            "demos",
        }
        assert all(
            set(d) >= {"pool_index", "label", "text", "block_span", "input_span", "label_pos", "delim_span"}
            for d in record["demos"]
        )
        assert 3 not in [d["pool_index"] for d in record["demos"]]
        check_segment_map(tokenizers["smollm2"], meta, record, spec["template"])


def test_prompt_rule_builds_the_contract_files_in_snakemake(
    run_workflow, tmp_path, smollm2_dir, wheel_cache, monkeypatch
):
    """prepare_task + model_manifest + build_prompts in Snakemake (SmolLM2 given as a local folder)."""
    monkeypatch.setenv("KICL_WHEEL_CACHE", str(wheel_cache))
    overrides = {
        "run": {"tasks": ["trec"], "models": ["smollm2-135m"]},
        "models": {"smollm2-135m": {"source": "local", "local": {"path": str(smollm2_dir)}}},
        "protocol": {"n_select": 6, "n_heldout": 4, "demo_strategy": "class_balanced", "n_demos": 6},
    }
    targets = [
        "results/prompts/smollm2-135m/trec/paper/meta.json",
        "results/prompts/smollm2-135m/trec/paper/prompts.jsonl",
    ]
    result = run_workflow(tmp_path, overrides, targets)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    meta = json.loads((result.workdir / targets[0]).read_text())
    records = read_prompts(result.workdir / targets[1])
    assert meta["strategy"] == "class_balanced" and meta["tokenizer"] == str(smollm2_dir) and len(records) == 10
    assert all(sorted(d["label"] for d in r["demos"]) == [0, 1, 2, 3, 4, 5] for r in records)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    for record in records:
        check_segment_map(tokenizer, meta, record, meta["template"])


def test_sentencepiece_pieces_are_tokenised_as_inside_a_prompt(tokenizers):
    """Llama-2-style tokenizers mark the start of every text; such pieces are tokenised after an anchor."""
    tokenizer = tokenizers["llama2_style"]
    pieces = PieceTokenizer(tokenizer)
    n_anchor = len(pieces.anchor_ids)
    for piece in ("Input:", "\n"):
        plain = tokenizer(piece, add_special_tokens=False)["input_ids"]
        anchored = tokenizer("\n" + piece, add_special_tokens=False)["input_ids"][n_anchor:]
        assert plain != anchored and pieces.encode(piece) == anchored
    assert len(pieces.encode(" Positive")) == 1
    smollm2 = PieceTokenizer(tokenizers["smollm2"])
    for piece in ("Input:", "\n", " Positive"):
        assert smollm2.encode(piece) == tokenizers["smollm2"](piece, add_special_tokens=False)["input_ids"]
