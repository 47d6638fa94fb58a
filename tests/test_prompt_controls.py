"""Label, input and test-input controls (issue 12), checked on the prompt files they produce."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pandas as pd
import pytest
from helpers import PROTOCOL, check_segment_map, gpt2_style_tokenizer, spec_with, toy_tables

from kicl.prompts.build import PromptError, PromptTables, VerbalizerError, build_prompt_set
from kicl.prompts.controls import derangement, round_half_up
from kicl.prompts.ood import (
    WORD,
    RewritesFileError,
    check_rewrites_file,
    editable_words,
    inject_typos,
    rarer_synonyms,
    substitute_rare_words,
    zipf,
)
from kicl.prompts.options import Protocol

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return gpt2_style_tokenizer(tmp_path_factory.mktemp("bpe"))


def build(tokenizer, eval_table, pool, spec=None, protocol=None, other_pool=None):
    protocol = Protocol.of(PROTOCOL | {"n_demos": 6, "n_select": 10, "n_heldout": 6} | (protocol or {}))
    tables = PromptTables(eval_table, pool, other_pool)
    return build_prompt_set("toy", spec or spec_with(), "m", tokenizer, tables, protocol, None)


def three_class_spec():
    spec = spec_with(verbalizers=(" Yes", " Maybe", " No"))
    spec["label_names"] = ["yes", "maybe", "no"]
    return spec


def three_class_tables():
    eval_table, pool = toy_tables(n_eval=20, n_pool=40)
    pool["label"] = np.arange(len(pool)) % 3
    eval_table["label"] = np.arange(len(eval_table)) % 3
    return eval_table, pool


def pool_indices(records):
    return [[d["pool_index"] for d in r["demos"]] for r in records]


# ---- labels ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("three_classes", [False, True])
def test_flipped_labels_are_really_flipped_on_the_same_demonstrations(tokenizer, three_classes):
    eval_table, pool = three_class_tables() if three_classes else toy_tables()
    spec = three_class_spec() if three_classes else spec_with()
    n_classes = len(spec["label_names"])
    _, gold = build(tokenizer, eval_table, pool, spec)
    meta, flipped = build(tokenizer, eval_table, pool, spec, protocol={"labels": "flipped"})
    assert meta["labels"] == "flipped" and pool_indices(flipped) == pool_indices(gold)
    for before, after in zip(gold, flipped):
        assert after["gold"] == before["gold"] == eval_table.loc[after["test_index"], "label"]
        for demo in after["demos"]:
            assert demo["true_label"] == pool.loc[demo["pool_index"], "label"]
            assert demo["label"] == (demo["true_label"] + 1) % n_classes != demo["true_label"]
        check_segment_map(tokenizer, meta, after, spec["template"])  # the label token shows the flipped label
    assert all(d["label"] == d["true_label"] for r in gold for d in r["demos"])


@pytest.mark.parametrize(("p", "k"), [(0.0, 4), (0.25, 4), (0.5, 4), (0.75, 4), (1.0, 4), (0.25, 6), (0.5, 5)])
def test_the_wrong_label_fraction_is_exact(tokenizer, p, k):
    eval_table, pool = three_class_tables()
    spec = three_class_spec()
    _, gold = build(tokenizer, eval_table, pool, spec, protocol={"n_demos": k})
    meta, noisy = build(tokenizer, eval_table, pool, spec, protocol={"labels": "noisy", "label_noise": p, "n_demos": k})
    assert meta["label_noise"] == p and pool_indices(noisy) == pool_indices(gold)
    expected = round_half_up(p * k)  # 0.25 x 6 = 1.5 -> 2; 0.5 x 5 = 2.5 -> 3
    wrong_labels = []
    for record in noisy:
        wrong = [d for d in record["demos"] if d["label"] != d["true_label"]]
        assert len(wrong) == expected
        assert all(0 <= d["label"] < 3 for d in record["demos"])
        wrong_labels += [(d["true_label"], d["label"]) for d in wrong]
        check_segment_map(tokenizer, meta, record, spec["template"])
    if expected:  # a wrong label is drawn from BOTH other labels (not a fixed flip)
        assert len({(y, shown) for y, shown in wrong_labels}) > 3
    # which demonstrations are wrong differs between test points
    if 0 < expected < k:
        patterns = {tuple(d["label"] != d["true_label"] for d in r["demos"]) for r in noisy}
        assert len(patterns) > 1


def test_random_labels_are_drawn_from_the_label_set(tokenizer):
    eval_table, pool = three_class_tables()
    _, gold = build(tokenizer, eval_table, pool, three_class_spec())
    meta, shuffled = build(tokenizer, eval_table, pool, three_class_spec(), protocol={"labels": "random"})
    assert pool_indices(shuffled) == pool_indices(gold)
    shown = np.array([d["label"] for r in shuffled for d in r["demos"]])
    true = np.array([d["true_label"] for r in shuffled for d in r["demos"]])
    assert set(shown) == {0, 1, 2} and 0.15 < np.mean(shown == true) < 0.6  # about 1/3 agree by chance


def test_abstract_labels_replace_the_words_of_demonstrations_and_readout(tokenizer):
    eval_table, pool = three_class_tables()
    spec = spec_with(verbalizers=(" Negative", " Positive", " x"))
    spec["label_names"] = ["neg", "pos", "other"]
    words = [" Maybe", " Yes", " No"]
    _, gold = build(tokenizer, eval_table, pool, spec)
    meta, records = build(tokenizer, eval_table, pool, spec, protocol={"labels": "abstract", "abstract_labels": words})
    assert meta["verbalizers"] == words and meta["task_verbalizers"] == spec["verbalizers"]
    assert meta["abstract_label_map"] == {"neg": " Maybe", "pos": " Yes", "other": " No"}
    assert meta["label_token_ids"] == [tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in words]
    assert pool_indices(records) == pool_indices(gold)
    for record in records:
        assert all(d["label"] == d["true_label"] for d in record["demos"])
        assert all(w not in record["text"] for w in (" Negative", " Positive"))
        check_segment_map(tokenizer, meta, record, spec["template"])  # label tokens decode to the abstract words
    # the default letters are two tokens for this tokenizer: the single-token check names the protocol key
    with pytest.raises(VerbalizerError, match=r"protocol\.abstract_labels: .*not a single token"):
        build(tokenizer, eval_table, pool, spec, protocol={"labels": "abstract"})


# ---- inputs ----------------------------------------------------------------------------------------


def test_derangements_move_every_position():
    rng = np.random.default_rng(0)
    for n in range(2, 9):
        for _ in range(20):
            permutation = derangement(n, rng)
            assert sorted(permutation) == list(range(n)) and not (permutation == np.arange(n)).any()
    assert list(derangement(1, rng)) == [0] and list(derangement(0, rng)) == []


def test_permuted_inputs_keep_the_label_sequence(tokenizer):
    eval_table, pool = toy_tables()
    _, gold = build(tokenizer, eval_table, pool)
    meta, permuted = build(tokenizer, eval_table, pool, protocol={"inputs": "permuted"})
    assert meta["inputs"] == "permuted"
    for before, after in zip(gold, permuted):
        # the label sequence (labels of the chosen rows, in place) is the gold condition's
        assert [d["label"] for d in after["demos"]] == [d["label"] for d in before["demos"]]
        assert [d["label_pool_index"] for d in after["demos"]] == [d["pool_index"] for d in before["demos"]]
        # the inputs are the same texts, each moved to another position
        shown = [d["pool_index"] for d in after["demos"]]
        original = [d["pool_index"] for d in before["demos"]]
        assert sorted(shown) == sorted(original) and all(a != b for a, b in zip(shown, original))
        for demo in after["demos"]:
            assert demo["text"] == pool.loc[demo["pool_index"], "text"]
            assert demo["true_label"] == pool.loc[demo["pool_index"], "label"]  # the shown input's own label
        check_segment_map(tokenizer, meta, after, spec_with()["template"])
    # inputs and labels now disagree for some demonstrations
    assert any(d["label"] != d["true_label"] for r in permuted for d in r["demos"])


def test_other_task_inputs_come_from_the_other_pool_with_this_tasks_labels(tokenizer):
    eval_table, pool = toy_tables()
    other = pd.DataFrame({"text": [f"other task text number {i}" for i in range(25)], "label": 0}, index=range(7, 32))
    _, gold = build(tokenizer, eval_table, pool)
    meta, records = build(
        tokenizer, eval_table, pool, protocol={"inputs": "other_task", "other_task": "trec"}, other_pool=other
    )
    assert meta["inputs"] == "other_task" and meta["other_task"] == "trec"
    for before, after in zip(gold, records):
        assert [d["label"] for d in after["demos"]] == [d["label"] for d in before["demos"]]
        texts = [d["text"] for d in after["demos"]]
        assert len(set(texts)) == 6 and all(
            t == other.loc[d["pool_index"], "text"] for t, d in zip(texts, after["demos"])
        )
        assert all(d["true_label"] is None for d in after["demos"])
        check_segment_map(tokenizer, meta, after, spec_with()["template"])
    with pytest.raises(PromptError, match="protocol.inputs 'other_task' needs the demonstration pool"):
        build(tokenizer, eval_table, pool, protocol={"inputs": "other_task", "other_task": "trec"})
    with pytest.raises(PromptError, match="protocol.other_task 'trec': 6 demonstration inputs requested"):
        build(
            tokenizer,
            eval_table,
            pool,
            protocol={"inputs": "other_task", "other_task": "trec"},
            other_pool=other.iloc[:3],
        )


# ---- test inputs -----------------------------------------------------------------------------------

SENTENCES = [
    "The acting is dull and the plot is thin, but the music is wonderful.",
    "A charming, funny and often affecting journey through a strange country.",
    "What is the capital city of Australia and when was it founded?",
    "An ugly, boring movie with bad jokes and a terrible ending.",
    "Quite good: it's 100% fun for the whole family (kids included)!",
]


def changed_runs(before: str, after: str) -> list[tuple[str, str]]:
    """Pairs of letter runs that differ; the number of runs must be the same."""
    a, b = WORD.findall(before), WORD.findall(after)
    assert len(a) == len(b), (before, after)
    return [(x, y) for x, y in zip(a, b) if x != y]


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.3, 0.5, 1.0])
def test_typos_edit_exactly_the_asked_share_of_words_once_each(rate):
    rng = np.random.default_rng(3)
    for text in SENTENCES * 4:
        edited = inject_typos(text, rate, rng)
        changes = changed_runs(text, edited)
        assert len(changes) == round_half_up(rate * len(editable_words(text)))
        for old, new in changes:
            assert len(old) >= 3 and abs(len(new) - len(old)) <= 1
            if len(new) == len(old):  # a substitution or an adjacent swap
                differing = [i for i in range(len(old)) if old[i] != new[i]]
                assert len(differing) == 1 or (
                    len(differing) == 2 and differing[1] == differing[0] + 1 and sorted(old) == sorted(new)
                )
        assert re.sub(r"[^\W\d_]", "", edited) == re.sub(r"[^\W\d_]", "", text)  # only letters change


def test_typo_condition_changes_only_the_test_inputs(tokenizer):
    eval_table, pool = toy_tables()
    eval_table["text"] = [SENTENCES[i % 5] + f" e{i}" for i in range(len(eval_table))]
    _, original = build(tokenizer, eval_table, pool)
    meta, typos = build(tokenizer, eval_table, pool, protocol={"test_inputs": "typos", "typo_rate": 0.3})
    assert meta["test_inputs"] == "typos" and meta["protocol"]["typo_rate"] == 0.3
    assert [r["test_index"] for r in typos] == [r["test_index"] for r in original]
    assert pool_indices(typos) == pool_indices(original)
    for before, after in zip(original, typos):
        text = eval_table.loc[after["test_index"], "text"]
        assert after["original_test_text"] == before["test_text"] == text and after["gold"] == before["gold"]
        assert len(changed_runs(text, after["test_text"])) == round_half_up(0.3 * len(editable_words(text))) > 0
        check_segment_map(tokenizer, meta, after, spec_with()["template"])


def test_each_prompt_records_whether_its_test_input_changed(tokenizer):
    """Typos at rate 0.2 leave inputs with at most 2 words of 3+ letters unchanged (round(0.2·2) = 0): the record
    says so (audit 2, L6), and the original condition changes none."""
    eval_table, pool = toy_tables()
    short = ["ok go", "it is so", "bad film", "a fine day", "no way, no"]
    eval_table["text"] = [
        (short[i % 5] if i % 2 else SENTENCES[i % 5].strip()) + f" e{i}" for i in range(len(eval_table))
    ]
    meta, typos = build(tokenizer, eval_table, pool, protocol={"test_inputs": "typos", "typo_rate": 0.2})
    flags = [r["test_input_changed"] for r in typos]
    assert flags == [r["test_text"] != r["original_test_text"] for r in typos]
    assert flags == [round_half_up(0.2 * len(editable_words(r["original_test_text"]))) > 0 for r in typos]
    assert 0 < sum(flags) < len(flags) and meta["n_test_inputs_changed"] == sum(flags)
    meta, original = build(tokenizer, eval_table, pool)
    assert not any(r["test_input_changed"] for r in original) and meta["n_test_inputs_changed"] == 0


def test_rare_words_are_rarer_synonyms_at_the_asked_rate():
    rng = np.random.default_rng(0)
    total = 0
    for text in SENTENCES:
        replaced, n_eligible = substitute_rare_words(text, 0.5, 1.0, rng)
        changes = changed_runs(text, replaced)
        assert len(changes) == round_half_up(0.5 * n_eligible)
        for old, new in changes:
            assert new.lower() in rarer_synonyms(old, 1.0)
            assert 1.0 <= zipf(new.lower()) <= zipf(old.lower()) - 1.0
            assert old[0].isupper() == new[0].isupper()
        total += len(changes)
    assert total >= 5
    assert "amusing" in rarer_synonyms("funny", 1.0) and rarer_synonyms("the", 1.0) == ()
    # every word that has a rarer synonym is replaced at rate 1
    replaced, n_eligible = substitute_rare_words(SENTENCES[3], 1.0, 1.0, np.random.default_rng(1))
    assert len(changed_runs(SENTENCES[3], replaced)) == n_eligible > 0


def write_rewrites(path, rows, kind="jsonl"):
    if kind == "jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    else:
        pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.mark.parametrize("kind", ["jsonl", "csv"])
def test_rewrites_are_applied_to_the_right_test_points(tokenizer, tmp_path, kind):
    eval_table, pool = toy_tables()
    rows = [{"test_index": i, "type": "complex", "text": f"rewritten complex {i}"} for i in range(len(eval_table))]
    rows += [{"test_index": i, "type": "typos", "text": f"rewritten typos {i}"} for i in range(0, len(eval_table), 2)]
    path = write_rewrites(tmp_path / f"rewrites_toy.{kind}", rows, kind)
    protocol = {"test_inputs": "rewrites", "rewrites_file": str(tmp_path / f"rewrites_{{task}}.{kind}")}
    _, original = build(tokenizer, eval_table, pool)
    meta, records = build(tokenizer, eval_table, pool, protocol=protocol | {"rewrite_type": "complex"})
    assert pool_indices(records) == pool_indices(original)
    for record in records:
        assert record["test_text"] == f"rewritten complex {record['test_index']}"
        assert record["original_test_text"] == eval_table.loc[record["test_index"], "text"]
        check_segment_map(tokenizer, meta, record, spec_with()["template"])
    # a type that lacks a selected test point stops, naming the file and the test point
    with pytest.raises(RewritesFileError, match=rf"{re.escape(str(path))}: no rewrite of type 'typos' for test_index"):
        build(tokenizer, eval_table, pool, protocol=protocol | {"rewrite_type": "typos"})
    with pytest.raises(
        RewritesFileError, match="no rewrite of type 'rare' .*the file has types \\['complex', 'typos'\\]"
    ):
        build(tokenizer, eval_table, pool, protocol=protocol | {"rewrite_type": "rare"})


def test_a_rewrite_whose_original_differs_from_the_eval_text_stops(tokenizer, tmp_path):
    eval_table, pool = toy_tables()
    rows = [
        {"test_index": i, "type": "t", "text": f"new {i}", "original": eval_table.loc[i, "text"]}
        for i in range(len(eval_table))
    ]
    bad = build(tokenizer, eval_table, pool)[1][3]["test_index"]  # a selected test point
    rows[bad]["original"] = "some other sentence"
    path = write_rewrites(tmp_path / "r.jsonl", rows)
    protocol = {"test_inputs": "rewrites", "rewrites_file": str(path), "rewrite_type": "t"}
    with pytest.raises(RewritesFileError, match=rf"{re.escape(str(path))}:{bad + 1}: the original of test_index {bad}"):
        build(tokenizer, eval_table, pool, protocol=protocol)
    rows[bad]["original"] = eval_table.loc[bad, "text"]
    write_rewrites(path, rows)
    assert build(tokenizer, eval_table, pool, protocol=protocol)[1][0]["test_text"].startswith("new ")


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [
        (None, ".jsonl", ": rewrites file not found"),
        (
            '{"test_index": 0, "type": "t", "text": "a"}\n{"test_index": 1, "type": "t", "text": "b"\n',
            ".jsonl",
            ":2: not valid JSON",
        ),
        (
            '{"test_index": 0, "type": "t", "text": "a", "extra": 1}\n',
            ".jsonl",
            ":1: unknown column\\(s\\) \\['extra'\\]",
        ),
        ('{"test_index": 0, "type": "t"}\n', ".jsonl", ":1: missing column\\(s\\) \\['text'\\]"),
        (
            '{"test_index": 0, "type": "t", "text": "a"}\n{"test_index": 0, "type": "t", "text": "b"}\n',
            ".jsonl",
            ":2: duplicate rewrite of test_index 0, type 't' \\(first on line 1\\)",
        ),
        ('{"test_index": -1, "type": "t", "text": "a"}\n', ".jsonl", ":1: test_index -1 is not a non-negative integer"),
        ('{"test_index": 0, "type": "t", "text": " "}\n', ".jsonl", ":1: empty or non-text text"),
        ("test_index,type,text\n0,t,a\n1,t\n", ".csv", ":3: 2 fields where the header has 3"),
        ("test_index,type,text,note\n0,t,a,x\n", ".csv", ":1: unknown column\\(s\\) \\['note'\\]"),
        ("test_index,type,text\n0,t,a\n2,u,b\n0,t,c\n", ".csv", ":4: duplicate rewrite"),
        ("test_index,type,text\nzero,t,a\n", ".csv", ":2: test_index 'zero'"),
        ("test_index\ttype\ttext\n", ".tsv", ": a rewrites file is .csv or .jsonl"),
    ],
)
def test_check_rewrites_file_names_the_file_and_the_first_bad_line(tmp_path, content, suffix, message):
    path = tmp_path / f"rewrites{suffix}"
    if content is not None:
        path.write_text(content)
    with pytest.raises(RewritesFileError, match=re.escape(str(path)) + message):
        check_rewrites_file(path)


def test_check_rewrites_file_reads_a_good_file(tmp_path):
    path = write_rewrites(
        tmp_path / "ok.csv",
        [
            {"test_index": 3, "type": "typos", "text": 'a "quoted", text'},
            {"test_index": 3, "type": "rare", "text": "b"},
        ],
        "csv",
    )
    rewrites = check_rewrites_file(path, "typos")
    assert rewrites[(3, "typos")]["text"] == 'a "quoted", text' and rewrites[(3, "rare")]["line"] == 3


# ---- no control moves the test points --------------------------------------------------------------


def test_no_control_changes_the_test_points(tokenizer, tmp_path):
    eval_table, pool = toy_tables()
    rows = [{"test_index": i, "type": "t", "text": f"new {i}"} for i in range(len(eval_table))]
    path = write_rewrites(tmp_path / "r.jsonl", rows)
    other = pd.DataFrame({"text": [f"other {i}" for i in range(20)], "label": 0})
    _, paper = build(tokenizer, eval_table, pool)
    for overrides in (
        {"labels": "flipped"},
        {"labels": "noisy", "label_noise": 0.5},
        {"labels": "random"},
        {"inputs": "permuted"},
        {"inputs": "other_task", "other_task": "x"},
        {"test_inputs": "typos"},
        {"test_inputs": "rare_words"},
        {"test_inputs": "rewrites", "rewrites_file": str(path), "rewrite_type": "t"},
        {"order_seed": 4},
    ):
        _, records = build(tokenizer, eval_table, pool, protocol=overrides, other_pool=other)
        assert [(r["test_index"], r["split"], r["gold"]) for r in records] == [
            (r["test_index"], r["split"], r["gold"]) for r in paper
        ], overrides
        assert [sorted(d["label_pool_index"] for d in r["demos"]) for r in records] == [
            sorted(d["pool_index"] for d in r["demos"]) for r in paper
        ], overrides
