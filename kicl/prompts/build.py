"""ICL prompts with a segment map: every token's role is known, no string search later.

A prompt is ``[special prefix] demo_1 ... demo_k  input_prefix x_test output_prefix`` where each
demonstration block is ``input_prefix x_i output_prefix label_word delimiter``. The template (per task,
from the config) holds ``input_prefix`` (e.g. "Input: "), ``output_prefix`` (e.g. "\\nOutput:"),
``delimiter`` (e.g. "\\n") and ``text`` (how the raw fields form x, e.g. "{sentence}"); the label words are
the task's ``verbalizers`` (e.g. " negative", " positive", with their leading space).

Tokenisation is piecewise: each piece is tokenised on its own (no special tokens) and the ids are
concatenated, so span boundaries are exact. The whitespace that ends ``input_prefix`` is moved to the
start of the input piece (" " + x), as byte-level BPE tokenisers attach a word's leading space to the word;
``input_span`` therefore decodes to exactly the input as it appears in the prompt, the label token to the
verbalizer and ``delim_span`` to the delimiter. Each piece is checked to decode back to itself.

Demonstrations are drawn per test point by a strategy from :data:`STRATEGIES` with a generator seeded by
(protocol seed, test index), so a prompt does not depend on which other prompts are built. The strategies that
select by a similarity (``nearest``/``farthest``/``similarity_band``: encoder cosine; ``bm25``; ``model_kernel``:
the model's Eq. 9 kernel) get it from a similarity provider (:mod:`kicl.prompts.retrieval`). The condition's
order, label, input and test-input controls (:mod:`kicl.prompts.controls`, :mod:`kicl.prompts.ood`) are then
applied with their own seed streams, so they never change the chosen set or the test points. The label and input
controls are applied to the chosen set in its native (selection) order, keyed by pool index, BEFORE the order
control places it: two orderings of one condition show the same (pool index, input, shown label) triples.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from kicl.config import ConfigError
from kicl.data.tasks import drop_empty, load_split
from kicl.prompts.bm25 import bm25_similarity
from kicl.prompts.controls import (
    INPUT_STREAM,
    LABEL_STREAM,
    ORDER_STREAM,
    RARE_WORD_STREAM,
    TYPO_STREAM,
    control_labels,
    control_rng,
    order_demos,
    other_task_rows,
    permuted_positions,
)
from kicl.prompts.files import write_prompt_set
from kicl.prompts.ood import (
    RewritesFileError,
    check_rewrites_file,
    inject_typos,
    input_changed,
    rewrites_path,
    substitute_rare_words,
)
from kicl.prompts.options import Protocol
from kicl.prompts.pieces import (
    PieceTokenizer,
    PromptError,
    VerbalizerError,
    query_ids,
    render_query,
    split_trailing_spaces,
)
from kicl.prompts.retrieval import (
    NEAR_COPY_ENCODER_STRATEGIES,
    SIMILARITY_KINDS,
    SORTED_ORDERS,
    SimilarityProvider,
    cap_pool,
    encoder_similarity,
    needed_similarities,
    needs_encoder,
    selection_similarity,
    similarity_matrix,
)
from kicl.prompts.strategies import STRATEGIES

log = logging.getLogger(__name__)

# the tokenisation helpers live in kicl.prompts.pieces (the forward pass needs them without pandas); they stay
# importable from here because they are part of building a prompt
__all__ = [
    "Demo",
    "PieceTokenizer",
    "PromptError",
    "VerbalizerError",
    "build_prompt",
    "build_prompt_files",
    "PromptPaths",
    "PromptTables",
    "build_prompt_set",
    "check_template",
    "query_ids",
    "render_query",
    "select_eval_points",
]


# ---- templates ------------------------------------------------------------------------------------


def check_template(template: dict, verbalizers: Sequence[str], where: str) -> None:
    """Reject templates whose label word would not start a fresh token."""
    if template["output_prefix"] != template["output_prefix"].rstrip(" \t"):
        raise PromptError(
            f"{where}.template.output_prefix {template['output_prefix']!r} ends with a space; put the space "
            f"into the verbalizers instead (e.g. ' positive'), so that each label word is one token"
        )
    if not template["output_prefix"] or not template["delimiter"]:
        raise PromptError(f"{where}.template: output_prefix and delimiter must not be empty")
    if any(not word.strip() for word in verbalizers):
        raise PromptError(f"{where}.verbalizers: empty label word in {list(verbalizers)}")


_URL_OR_USER = re.compile(r"https?://\S+|www\.\S+|@\w+")
_PUNCTUATION = re.compile(r"[^\w\s]|_")


def normalised_text(text: str) -> str:
    """The text a near-copy shares with its original: lower case, without @user handles, URLs and punctuation,
    whitespace collapsed ("@user Great movie!!" and "great movie" are the same)."""
    text = _URL_OR_USER.sub(" ", str(text).lower())
    return " ".join(_PUNCTUATION.sub(" ", text).split())


@dataclass
class Demo:
    """One demonstration: its row in the demo pool, label id and input text."""

    pool_index: int
    label: int
    text: str


def build_prompt(
    pieces: PieceTokenizer, template: dict, verbalizers: Sequence[str], demos: Sequence[Demo], test_text: str
) -> dict:
    """Token ids, full text and segment map of one prompt (spans are end-exclusive token positions)."""
    head, space = split_trailing_spaces(template["input_prefix"])
    ids: list[int] = list(pieces.prefix_ids)
    text_parts: list[str] = [pieces.decode(pieces.prefix_ids)] if pieces.prefix_ids else []

    def add(piece: str) -> tuple[int, int]:
        start = len(ids)
        if piece:
            ids.extend(pieces.encode(piece))
            text_parts.append(piece)
        return start, len(ids)

    records = []
    for demo in demos:
        block_start, _ = add(head)
        input_span = add(space + demo.text)
        add(template["output_prefix"])
        label_span = add(verbalizers[demo.label])
        delim_span = add(template["delimiter"])
        record = {
            "pool_index": int(demo.pool_index),
            "label": int(demo.label),
            "text": demo.text,
            "block_span": [block_start, delim_span[1]],
            "input_span": list(input_span),
            "label_pos": label_span[0],
            "delim_span": list(delim_span),
        }
        if label_span[1] - label_span[0] > 1:
            record["label_span"] = list(label_span)
        records.append(record)
    add(head)
    test_span = add(space + test_text)
    add(template["output_prefix"])
    body = "".join(text_parts[1:] if pieces.prefix_ids else text_parts)
    if pieces.decode(ids[len(pieces.prefix_ids) :]) != body:
        raise PromptError(f"{pieces.where}: the prompt's tokens do not decode back to its text: {body[:200]!r}")
    return {
        "text": "".join(text_parts),
        "input_ids": ids,
        "test_text": test_text,
        "test_span": list(test_span),
        "demos": records,
    }


# ---- evaluation points -----------------------------------------------------------------------------


def select_eval_points(n_rows: int, n_select: int, n_heldout: int, seed: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Seeded disjoint selection and held-out test points from an evaluation split of n_rows.

    When the split is smaller than n_select + n_heldout, the held-out set is filled first (it is what
    Table 2 reports) and the selection set gets the rest. Returns (row indices, split names, report).
    """
    order = np.random.default_rng(seed).permutation(n_rows)
    heldout = min(n_heldout, n_rows)
    select = min(n_select, n_rows - heldout)
    indices = np.concatenate([order[heldout : heldout + select], order[:heldout]])
    splits = np.array(["select"] * select + ["heldout"] * heldout)
    report = {
        "n_select_requested": n_select,
        "n_heldout_requested": n_heldout,
        "n_select": int(select),
        "n_heldout": int(heldout),
        "eval_size": n_rows,
        "capped": bool(select < n_select or heldout < n_heldout),
    }
    return indices, splits, report


# ---- the whole prompt set --------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptTables:
    """The normalised tables of one prompt set: the evaluation split, the demonstration pool and, for
    ``protocol.inputs: other_task``, the other task's demonstration pool."""

    eval: pd.DataFrame
    pool: pd.DataFrame
    other_pool: pd.DataFrame | None = None


@dataclass
class _PromptSet:
    """What the phases of :func:`build_prompt_set` share: one (model, task, condition), its tables (the pool
    capped for the ranking strategies), label words, test points and the test inputs as shown."""

    task: str
    task_spec: dict
    model: str
    where: str
    protocol: Protocol
    tables: PromptTables
    pieces: PieceTokenizer
    verbalizers: list[str]
    label_token_ids: list[int]
    max_length: int | None
    indices: np.ndarray
    splits: np.ndarray
    report: dict
    originals: list[str]
    shown_tests: list[str]

    @property
    def n_classes(self) -> int:
        return len(self.task_spec["label_names"])


@dataclass
class _Similarity:
    """Phase 1's similarities: the selection kind and matrix (None for random strategies), the encoder cosine
    matrix where one is known (selection by encoder, or the near-copy filter), each pool index's column."""

    kind: str | None
    selection: np.ndarray | None
    encoder: np.ndarray | None
    pool_position: dict[int, int]


def _similarity_providers(
    protocol: Protocol, given: Mapping[str, SimilarityProvider] | None, where: str
) -> dict[str, SimilarityProvider]:
    """The provider of each similarity kind the protocol needs (:func:`needed_similarities`)."""
    providers = dict(given or {})
    unknown = sorted(set(providers) - set(SIMILARITY_KINDS))
    if unknown:
        raise PromptError(f"{where}: unknown similarity provider kind(s) {unknown}; known: {list(SIMILARITY_KINDS)}")
    needed = needed_similarities(protocol)
    if "encoder" in needed and "encoder" not in providers:
        culprit = (
            f"protocol.demo_strategy {protocol.demo_strategy!r}"
            if selection_similarity(protocol.demo_strategy) == "encoder"
            else f"protocol.demo_order {protocol.demo_order!r}"
        )
        raise PromptError(
            f"{where}: {culprit} needs sentence embeddings (protocol.retrieval_encoder) but no encoder similarity "
            "provider was given"
        )
    if "bm25" in needed and "bm25" not in providers:
        providers["bm25"] = bm25_similarity
    if "model_kernel" in needed and "model_kernel" not in providers:
        raise PromptError(
            f"{where}: protocol.demo_strategy 'model_kernel' needs the model's prediction similarity "
            "P(o|x_test)ᵀP(o|x_i) but no model_kernel similarity provider was given"
        )
    return providers


def _test_inputs(protocol: Protocol, task: str, originals: list[str], indices: np.ndarray, where: str) -> list[str]:
    """The test inputs as shown under ``protocol.test_inputs`` (:mod:`kicl.prompts.ood`)."""
    mode, seed = protocol.test_inputs, int(protocol.seed)
    if mode == "original":
        return list(originals)
    if mode == "typos":
        return [
            inject_typos(text, float(protocol.typo_rate), control_rng(seed, row, TYPO_STREAM))
            for text, row in zip(originals, indices)
        ]
    if mode == "rare_words":
        return [
            substitute_rare_words(
                text,
                float(protocol.rare_word_rate),
                float(protocol.rare_word_gap),
                control_rng(seed, row, RARE_WORD_STREAM),
            )[0]
            for text, row in zip(originals, indices)
        ]
    path, kind = rewrites_path(protocol, task), str(protocol.rewrite_type)
    rewrites = check_rewrites_file(path, kind)
    shown = []
    for text, row in zip(originals, indices):
        rewrite = rewrites.get((int(row), kind))
        if rewrite is None:
            raise RewritesFileError(
                f"{path}: no rewrite of type {kind!r} for test_index {int(row)} ({where}); every selected test "
                "point needs one"
            )
        if "original" in rewrite and rewrite["original"].strip() != text.strip():
            raise RewritesFileError(
                f"{path}:{rewrite['line']}: the original of test_index {int(row)} is {rewrite['original']!r}, but the "
                f"eval split has {text!r} ({where}); is the file for this task and split?"
            )
        shown.append(rewrite["text"].strip())
    return shown


def _similarities(
    providers: Mapping[str, SimilarityProvider], kind: str, tests: list[str], pool_texts: list[str], where: str
) -> np.ndarray:
    """One provider call, its shape and values checked (errors name the task and model)."""
    try:
        return similarity_matrix(providers[kind], kind, tests, pool_texts)
    except ValueError as error:
        raise PromptError(f"{where}: {error}") from error


def _label_words(task_spec: dict, protocol: Protocol, pieces: PieceTokenizer) -> tuple[list[str], list[int]]:
    """The label words shown and read out (the task's verbalizers, or ``protocol.abstract_labels``) and their
    token ids."""
    if protocol.labels != "abstract":
        verbalizers = list(task_spec["verbalizers"])
        return verbalizers, pieces.label_token_ids(verbalizers, protocol.readout)
    verbalizers = list(protocol.abstract_labels[: len(task_spec["label_names"])])
    check_template(task_spec["template"], verbalizers, "protocol.abstract_labels")
    try:
        return verbalizers, pieces.label_token_ids(verbalizers, protocol.readout)
    except VerbalizerError as error:
        raise VerbalizerError(f"protocol.abstract_labels: {error}") from error


def _eval_points(eval_table: pd.DataFrame, protocol: Protocol, task_spec: dict, where: str):
    """(row indices, split names, report) of the test points (:func:`select_eval_points`), a capped draw logged."""
    indices, splits, report = select_eval_points(len(eval_table), protocol.n_select, protocol.n_heldout, protocol.seed)
    if len(indices) == 0:
        raise PromptError(f"{where}: no test points (protocol.n_select + protocol.n_heldout is 0)")
    if report["capped"]:
        log.warning(
            "%s: the evaluation split %r has %d rows < n_select + n_heldout = %d; using %d selection + %d held-out",
            where,
            task_spec["eval_split"],
            report["eval_size"],
            protocol.n_select + protocol.n_heldout,
            report["n_select"],
            report["n_heldout"],
        )
    return indices, splits, report


def _selection_similarity(ctx: _PromptSet, providers: Mapping[str, SimilarityProvider]) -> _Similarity:
    """The similarities that choose the demonstrations, computed on the ORIGINAL test inputs (every test-input
    control keeps the chosen sets), and the encoder cosines of the near-copy filter."""
    protocol, pool, where = ctx.protocol, ctx.tables.pool, ctx.where
    kind = selection_similarity(protocol.demo_strategy)
    selection, encoder = None, None
    pool_texts = pool["text"].astype(str).tolist()
    if kind:
        selection = _similarities(providers, kind, ctx.originals, pool_texts, where)
        log.info("%s: %s similarity of %d test inputs to %d pool examples", where, kind, len(ctx.indices), len(pool))
    if kind == "encoder":
        encoder = selection
    elif protocol.demo_strategy in NEAR_COPY_ENCODER_STRATEGIES and "encoder" in providers:
        encoder = _similarities(providers, "encoder", ctx.originals, pool_texts, where)
    positions = {index: position for position, index in enumerate(pool.index)}
    return _Similarity(kind, selection, encoder, positions)


def _choose_demo_sets(ctx: _PromptSet, similarity: _Similarity) -> tuple[list[list[int]], int, int]:
    """Phase 1: the demonstration set of every test point, drawn by Generator([seed, test_index]) and nothing
    else; returns the sets, the pool rows removed as copies of a test input and the prompts that lost some."""
    protocol, pool = ctx.protocol, ctx.tables.pool
    strategy, k, seed = STRATEGIES[protocol.demo_strategy], int(protocol.n_demos), int(protocol.seed)
    dedup_similarity = float(protocol.dedup_similarity)
    pool_keys = np.array([normalised_text(text) for text in pool["text"].astype(str)])
    options = {"n_classes": ctx.n_classes, "similarity_band": list(protocol.similarity_band)}
    chosen_sets, n_removed, n_prompts_removed = [], 0, 0
    for prompt_id, row_index in enumerate(ctx.indices):
        test = ctx.tables.eval.iloc[int(row_index)]
        rng = np.random.default_rng([seed, int(row_index)])
        # the test input itself never serves as its own demonstration: copies up to case, @user handles, URLs,
        # punctuation and whitespace leave the pool for every strategy, near-copies (encoder cosine >=
        # protocol.dedup_similarity) for the ranking strategies when the encoder is given
        remove = pool_keys == normalised_text(ctx.originals[prompt_id])
        if similarity.encoder is not None:
            remove |= similarity.encoder[prompt_id] >= dedup_similarity
        candidates = pool
        if remove.any():  # no copy in the pool: the pool is used as it is (prompts unchanged by this check)
            candidates = pool[~remove]
            n_removed += int(remove.sum())
            n_prompts_removed += 1
        if similarity.selection is not None:
            options["similarities"] = similarity.selection[prompt_id][~remove]
        chosen_sets.append([int(i) for i in strategy(test, candidates, k, rng, **options)])
    return chosen_sets, n_removed, n_prompts_removed


def _order_similarity(
    ctx: _PromptSet, similarity: _Similarity, chosen_sets: list[list[int]], providers: Mapping[str, SimilarityProvider]
) -> list[dict[int, float]] | None:
    """Phase 2: the encoder similarity of each chosen demonstration to its test input, for the sorted orders (the
    sets are already fixed); None for the other orders."""
    if ctx.protocol.demo_order not in SORTED_ORDERS:
        return None
    if similarity.encoder is not None:
        column, matrix = similarity.pool_position, similarity.encoder
    else:
        union = sorted({i for chosen in chosen_sets for i in chosen})
        column = {index: position for position, index in enumerate(union)}
        texts = ctx.tables.pool.loc[union, "text"].astype(str).tolist()
        matrix = _similarities(providers, "encoder", ctx.originals, texts, ctx.where)
    return [{i: float(matrix[p, column[i]]) for i in chosen} for p, chosen in enumerate(chosen_sets)]


def _make_demos(ctx: _PromptSet, native: list[int], ordered: list[int], row_index: int) -> tuple[list[Demo], list]:
    """The demonstrations shown in prompt order ``ordered``, the label and input controls applied to the same rows
    in their native (selection) order ``native`` and keyed by pool index: every ordering of one set shows the same
    (input, shown label) pairs."""
    protocol, pool, other_pool, seed = ctx.protocol, ctx.tables.pool, ctx.tables.other_pool, int(ctx.protocol.seed)
    true_labels = [int(pool.at[i, "label"]) for i in native]
    shown_labels = control_labels(
        true_labels,
        protocol.labels,
        ctx.n_classes,
        control_rng(seed, row_index, LABEL_STREAM),
        float(protocol.label_noise),
    )
    input_rng = control_rng(seed, row_index, INPUT_STREAM)
    if protocol.inputs == "other_task":
        positions = other_task_rows(len(native), len(other_pool), input_rng, str(protocol.other_task))
        inputs = [(int(other_pool.index[j]), str(other_pool["text"].iloc[j]), None) for j in positions]
    else:
        source = permuted_positions(len(native), input_rng) if protocol.inputs == "permuted" else range(len(native))
        inputs = [(native[j], str(pool.at[native[j], "text"]), true_labels[j]) for j in source]
    by_row = {
        label_row: (Demo(index, label, text), {"true_label": true_label, "label_pool_index": int(label_row)})
        for (index, text, true_label), label, label_row in zip(inputs, shown_labels, native)
    }
    return [by_row[i][0] for i in ordered], [by_row[i][1] for i in ordered]


def _fitted_prompt(ctx: _PromptSet, prompt_id: int, chosen: list[int], ordered: list[int]) -> tuple[dict, list, int]:
    """The prompt of one test point with its demonstrations in the order ``ordered``, demonstrations dropped from
    the front while it exceeds the context (``protocol.context_policy: drop``); returns (prompt, kept order,
    number dropped)."""
    row_index, template = int(ctx.indices[prompt_id]), ctx.task_spec["template"]
    test_text, dropped = ctx.shown_tests[prompt_id], 0
    demos, extras = _make_demos(ctx, chosen, ordered, row_index)
    prompt = build_prompt(ctx.pieces, template, ctx.verbalizers, demos, test_text)
    while ctx.max_length is not None and len(prompt["input_ids"]) > ctx.max_length:
        message = (
            f"{ctx.where}: prompt {prompt_id} (test_index {row_index}) has {len(prompt['input_ids'])} tokens "
            f"with {len(demos)} demonstrations, more than the model's context length {ctx.max_length}"
        )
        if ctx.protocol.context_policy == "error" or not demos:
            raise PromptError(
                message + ". Reduce protocol.n_demos, or set protocol.context_policy: drop to drop demonstrations "
                "from the front until the prompt fits."
            )
        ordered = ordered[1:]  # the controls are applied anew to the kept demonstrations (native order)
        kept = set(ordered)
        demos, extras = _make_demos(ctx, [i for i in chosen if i in kept], ordered, row_index)
        dropped += 1
        prompt = build_prompt(ctx.pieces, template, ctx.verbalizers, demos, test_text)
    for record, extra in zip(prompt["demos"], extras):
        record.update(extra)
    return prompt, ordered, dropped


def _render(
    ctx: _PromptSet, similarity: _Similarity, chosen_sets: list[list[int]], order_similarity: list[dict] | None
) -> tuple[list[dict], int]:
    """Phase 3: order, controls, tokens; the prompt records and the number of prompts that lost demonstrations."""
    protocol, seed, k = ctx.protocol, int(ctx.protocol.seed), int(ctx.protocol.n_demos)
    records, n_dropped_prompts, n_dropped_demos = [], 0, 0
    for prompt_id, (row_index, split) in enumerate(zip(ctx.indices, ctx.splits)):
        row_index, chosen = int(row_index), chosen_sets[prompt_id]
        order_seed = protocol.order_seed
        permutation_rng = None if order_seed is None else control_rng(seed, row_index, ORDER_STREAM, order_seed)
        scores = None if order_similarity is None else [order_similarity[prompt_id][i] for i in chosen]
        ordered = order_demos(chosen, protocol.demo_order, scores, permutation_rng)
        prompt, ordered, dropped = _fitted_prompt(ctx, prompt_id, chosen, ordered)
        n_dropped_demos += dropped
        n_dropped_prompts += len(prompt["demos"]) < k
        original = ctx.originals[prompt_id]
        record = {
            "prompt_id": prompt_id,
            "split": str(split),
            "test_index": row_index,
            "gold": int(ctx.tables.eval["label"].iloc[row_index]),
            "n_demos": len(prompt["demos"]),
            **prompt,
            "original_test_text": original,
            "test_input_changed": input_changed(original, prompt["test_text"]),
        }
        # each kept demonstration's similarity to the test input (of the row chosen at its position), prompt order
        if similarity.selection is not None:
            columns = [similarity.pool_position[i] for i in ordered]
            record["demo_similarity"] = [float(similarity.selection[prompt_id, c]) for c in columns]
            if order_similarity is not None and similarity.kind != "encoder":
                record["demo_encoder_similarity"] = [order_similarity[prompt_id][i] for i in ordered]
        elif order_similarity is not None:
            record["demo_similarity"] = [order_similarity[prompt_id][i] for i in ordered]
        records.append(record)
    if n_dropped_demos:
        log.warning(
            "%s: dropped %d demonstrations from %d prompts to fit %d tokens",
            ctx.where,
            n_dropped_demos,
            n_dropped_prompts,
            ctx.max_length,
        )
    return records, n_dropped_prompts


def _meta(ctx: _PromptSet, records: list[dict], counts: dict[str, int], tokenizer_name: str) -> dict:
    """The meta block of the prompt-file contract (docs/prompt-files.md), before the keys of the controls."""
    protocol, tables, indices, n_classes = ctx.protocol, ctx.tables, ctx.indices, ctx.n_classes
    lengths = np.array([len(r["input_ids"]) for r in records])
    return {
        "task": ctx.task,
        "model": ctx.model,
        "label_names": list(ctx.task_spec["label_names"]),
        "verbalizers": list(ctx.verbalizers),
        "label_token_ids": [int(i) for i in ctx.label_token_ids],
        "readout": protocol.readout,
        "template": dict(ctx.task_spec["template"]),
        "n_demos": int(protocol.n_demos),
        "seed": int(protocol.seed),
        "strategy": protocol.demo_strategy,
        "tokenizer": tokenizer_name,
        **ctx.report,
        "eval_split": ctx.task_spec["eval_split"],
        "demo_split": ctx.task_spec["demo_split"],
        "pool_size": len(tables.pool),
        "n_prompts": len(records),
        "special_prefix_ids": [int(i) for i in ctx.pieces.prefix_ids],
        "context_policy": protocol.context_policy,
        "max_length": ctx.max_length,
        "n_prompts_with_dropped_demos": int(counts["dropped_prompts"]),
        "prompt_length": {"min": int(lengths.min()), "mean": float(lengths.mean()), "max": int(lengths.max())},
        "eval_label_counts": np.bincount(tables.eval["label"].to_numpy()[indices], minlength=n_classes).tolist(),
        "pool_label_counts": np.bincount(tables.pool["label"].to_numpy(), minlength=n_classes).tolist(),
        "pool_eval_text_overlap": int(len(set(tables.pool["text"]) & set(tables.eval["text"].iloc[indices]))),
        "pool_test_copies_removed": counts["removed"],
        "n_prompts_with_pool_copies_removed": counts["prompts_removed"],
        "demo_order": protocol.demo_order,
        "order_seed": protocol.order_seed,
        "labels": protocol.labels,
        "inputs": protocol.inputs,
        "test_inputs": protocol.test_inputs,
        "n_test_inputs_changed": int(sum(r["test_input_changed"] for r in records)),
        "protocol": dict(sorted(protocol.as_dict().items())),
    }


def _control_meta(ctx: _PromptSet, similarity: _Similarity, has_order_similarity: bool) -> dict:
    """The meta keys that only some controls and strategies write, in the contract's order."""
    protocol, meta = ctx.protocol, {}
    if protocol.labels == "abstract":
        meta["task_verbalizers"] = list(ctx.task_spec["verbalizers"])
        meta["abstract_label_map"] = dict(zip(ctx.task_spec["label_names"], ctx.verbalizers))
    if protocol.labels == "noisy":
        meta["label_noise"] = float(protocol.label_noise)
    if protocol.inputs == "other_task":
        meta["other_task"] = protocol.other_task
    if similarity.selection is not None or has_order_similarity:
        meta["demo_similarity_kind"] = similarity.kind or "encoder"
    if needs_encoder(protocol):
        meta["retrieval_encoder"] = protocol.retrieval_encoder
    if similarity.kind:
        meta["retrieval_pool_size"] = protocol.retrieval_pool_size
    near_copies = similarity.encoder is not None  # near-copy removal by encoder cosine too (capped pools only)
    meta["near_copy_filter"] = "normalised_text+encoder" if near_copies else "normalised_text"
    if near_copies:
        meta["dedup_similarity"] = float(protocol.dedup_similarity)
    return meta


def build_prompt_set(
    task: str,
    task_spec: dict,
    model: str,
    tokenizer,
    tables: PromptTables,
    protocol: Protocol,
    max_length: int | None,
    similarity_providers: Mapping[str, SimilarityProvider] | None = None,
) -> tuple[dict, list[dict]]:
    """Meta dict and prompt records of one (model, task, condition), following the prompt-file contract.

    ``protocol``: the condition's effective protocol (:class:`~kicl.prompts.options.Protocol`).
    ``similarity_providers``: kind (``encoder``, ``bm25``, ``model_kernel``) -> ``(test_texts, pool_texts) ->
    (n_test, n_pool)`` matrix, for the kinds :func:`~kicl.prompts.retrieval.needed_similarities` names; each is
    called once (``encoder``: e.g. :func:`~kicl.prompts.retrieval.encoder_similarity` of an embedding function;
    when given, it also removes near-copies of the test input for the ranking strategies). BM25 is built in; the
    ``encoder`` and ``model_kernel`` providers must be given when needed. ``tables.other_pool``: needed by
    ``protocol.inputs: other_task``.
    """
    where = f"task {task!r}, model {model!r}"
    check_template(task_spec["template"], task_spec["verbalizers"], f"tasks.{task}")
    problems = protocol.task_problems(len(task_spec["label_names"]))
    if problems:
        raise ConfigError(problems)
    pieces = PieceTokenizer(tokenizer, where)
    verbalizers, label_token_ids = _label_words(task_spec, protocol, pieces)
    if protocol.inputs == "other_task" and tables.other_pool is None:
        raise PromptError(
            f"{where}: protocol.inputs 'other_task' needs the demonstration pool of protocol.other_task "
            f"{protocol.other_task!r}, but none was given"
        )
    indices, splits, report = _eval_points(tables.eval, protocol, task_spec, where)
    originals = [str(tables.eval["text"].iloc[int(i)]) for i in indices]
    shown_tests = _test_inputs(protocol, task, originals, indices, where)
    providers = _similarity_providers(protocol, similarity_providers, where)
    if selection_similarity(protocol.demo_strategy):  # each pool text costs an embedding or a forward pass
        tables = replace(tables, pool=cap_pool(tables.pool, protocol.retrieval_pool_size, int(protocol.seed)))
    max_length = protocol.max_length or max_length
    words = {"pieces": pieces, "verbalizers": verbalizers, "label_token_ids": label_token_ids}
    points = {
        "indices": indices,
        "splits": splits,
        "report": report,
        "originals": originals,
        "shown_tests": shown_tests,
    }
    ctx = _PromptSet(task, task_spec, model, where, protocol, tables, max_length=max_length, **words, **points)
    similarity = _selection_similarity(ctx, providers)
    chosen_sets, n_removed, n_prompts_removed = _choose_demo_sets(ctx, similarity)
    order_similarity = _order_similarity(ctx, similarity, chosen_sets, providers)
    records, n_dropped_prompts = _render(ctx, similarity, chosen_sets, order_similarity)
    counts = {"dropped_prompts": n_dropped_prompts, "removed": n_removed, "prompts_removed": n_prompts_removed}
    meta = _meta(ctx, records, counts, getattr(tokenizer, "name_or_path", ""))
    return meta | _control_meta(ctx, similarity, order_similarity is not None), records


def build_prompt_files(
    task: str,
    task_spec: dict,
    model: str,
    paths: PromptPaths,
    protocol: Protocol,
    similarity_providers: Mapping[str, SimilarityProvider] | None = None,
    other_task_spec: dict | None = None,
    encoder_cache: str | Path | None = None,
) -> dict:
    """Rule entry point: load the task splits and the model's tokenizer, build and write the prompt files.

    ``paths``: the input and output files (:class:`PromptPaths`). ``similarity_providers``: e.g.
    ``{"model_kernel": provider}`` when :func:`~kicl.prompts.retrieval.needs_model_kernel`; the encoder's is added
    from ``paths.encoder_manifest``. ``other_task_spec`` (``protocol.inputs: other_task``): the other task's
    catalog entry. ``encoder_cache``: the folder of sentence embeddings shared by all jobs
    (kicl.data.encoders.encode_texts).
    """
    from kicl.data.models import load_tokenizer, read_manifest

    where = f"task {task!r}, model {model!r}"
    providers = dict(similarity_providers or {}) | _encoder_provider(protocol, paths, encoder_cache, where)
    tables = _load_tables(task, task_spec, protocol, paths, other_task_spec)
    manifest = read_manifest(paths.model_manifest)
    meta, records = build_prompt_set(
        task, task_spec, model, load_tokenizer(manifest), tables, protocol, manifest.get("max_length"), providers
    )
    meta["tokenizer"] = manifest["path"] or meta["tokenizer"]
    write_prompt_set(meta, records, paths.meta, paths.prompts)
    log.info(
        "task %s, model %s: %d prompts (%d selection + %d held-out), %d tokens on average -> %s",
        task,
        model,
        meta["n_prompts"],
        meta["n_select"],
        meta["n_heldout"],
        meta["prompt_length"]["mean"],
        paths.prompts,
    )
    return meta


@dataclass(frozen=True)
class PromptPaths:
    """The files of one build_prompts job: the model manifest and task splits it reads (the sentence encoder's
    manifest when :func:`~kicl.prompts.retrieval.needs_encoder`; the other task's demonstration split for
    ``protocol.inputs: other_task``) and the two files it writes."""

    model_manifest: str | Path | dict
    eval: str | Path
    demo: str | Path
    meta: str | Path
    prompts: str | Path
    encoder_manifest: str | Path | None = None
    other_demo: str | Path | None = None


def _encoder_provider(protocol: Protocol, paths: PromptPaths, cache, where: str) -> dict[str, SimilarityProvider]:
    """``{"encoder": cosine provider}`` of the encoder manifest, when the protocol needs one (else empty)."""
    from kicl.data.encoders import encoder_embed_function

    if needs_encoder(protocol) and paths.encoder_manifest is None:
        raise PromptError(
            f"{where}: protocol.demo_strategy {protocol.demo_strategy!r} / demo_order {protocol.demo_order!r} needs "
            f"the manifest of protocol.retrieval_encoder {protocol.retrieval_encoder!r}"
        )
    if paths.encoder_manifest is None:
        return {}
    return {"encoder": encoder_similarity(encoder_embed_function(paths.encoder_manifest, cache=cache))}


def _load_tables(task: str, task_spec: dict, protocol: Protocol, paths: PromptPaths, other_spec) -> PromptTables:
    """The evaluation split, the demonstration pool and, for ``protocol.inputs: other_task``, the other task's."""
    other_pool = None
    if protocol.inputs == "other_task":
        if other_spec is None or paths.other_demo is None:
            raise PromptError(
                f"task {task!r}: protocol.inputs 'other_task' needs the spec and demonstration split "
                f"of protocol.other_task {protocol.other_task!r}"
            )
        other_where = f"task {protocol.other_task!r}, demo split {other_spec['demo_split']!r}"
        other_pool = drop_empty(load_split(paths.other_demo, other_spec), other_where)
    pool = drop_empty(load_split(paths.demo, task_spec), f"task {task!r}, demo split {task_spec['demo_split']!r}")
    return PromptTables(load_split(paths.eval, task_spec), pool, other_pool)
