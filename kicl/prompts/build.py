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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

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
from kicl.prompts.options import effective_protocol
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
    EmbedFunction,
    SimilarityProvider,
    cap_pool,
    encoder_similarity,
    needed_similarities,
    needs_encoder,
    ranked_by_similarity,
    selection_similarity,
    similarity_matrix,
    similarity_quantiles,
)

log = logging.getLogger(__name__)

# the tokenisation helpers live in kicl.prompts.pieces (the forward pass needs them without pandas); they stay
# importable from here because they are part of building a prompt
__all__ = [
    "STRATEGIES",
    "Demo",
    "PieceTokenizer",
    "PromptError",
    "VerbalizerError",
    "build_prompt",
    "build_prompt_files",
    "build_prompt_set",
    "check_template",
    "query_ids",
    "register_strategy",
    "render_query",
    "resolve_protocol",
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


# ---- demonstration strategies ----------------------------------------------------------------------

DemoStrategy = Callable[..., np.ndarray]
STRATEGIES: dict[str, DemoStrategy] = {}


def register_strategy(name: str) -> Callable[[DemoStrategy], DemoStrategy]:
    """Decorator adding a demonstration strategy to :data:`STRATEGIES`.

    A strategy is called as ``strategy(test, pool, k, rng, **options)`` with the test example (a row of
    the normalised eval split: text, label, fields), the demonstration pool (normalised DataFrame whose
    index is the row in the demo split), the number of demonstrations, a seeded numpy Generator and the
    options of the call (``n_classes``, and for retrieval strategies e.g. precomputed similarities); it
    returns the chosen pool index labels, in prompt order.
    """

    def register(function: DemoStrategy) -> DemoStrategy:
        STRATEGIES[name] = function
        return function

    return register


@register_strategy("random")
def random_demos(test: pd.Series, pool: pd.DataFrame, k: int, rng: np.random.Generator, **options) -> np.ndarray:
    """k distinct pool examples uniformly at random, in random order (the paper's sampling)."""
    if k > len(pool):
        raise PromptError(f"{k} demonstrations requested but the demonstration pool has {len(pool)} examples")
    return pool.index.to_numpy()[rng.choice(len(pool), size=k, replace=False)]


@register_strategy("class_balanced")
def class_balanced_demos(
    test: pd.Series, pool: pd.DataFrame, k: int, rng: np.random.Generator, n_classes: int | None = None, **options
) -> np.ndarray:
    """k pool examples with per-class counts as equal as possible (the remainder goes to random classes),
    each class sampled uniformly without replacement, then shuffled into a random order."""
    labels = pool["label"].to_numpy()
    n_classes = n_classes or int(labels.max()) + 1
    quota = np.full(n_classes, k // n_classes)
    quota[rng.choice(n_classes, size=k % n_classes, replace=False)] += 1
    chosen = []
    for label, count in enumerate(quota):
        members = np.flatnonzero(labels == label)
        if count > len(members):
            raise PromptError(
                f"class_balanced needs {count} demonstrations of class {label}, the pool has {len(members)}"
            )
        chosen.append(members[rng.choice(len(members), size=count, replace=False)])
    positions = np.concatenate(chosen)
    return pool.index.to_numpy()[positions[rng.permutation(len(positions))]]


def _need_similarities(pool: pd.DataFrame, similarities: np.ndarray | None, name: str) -> np.ndarray:
    if similarities is None or len(similarities) != len(pool):
        raise PromptError(
            f"the {name} strategy needs the test input's similarity to every pool example "
            "(build_prompt_set computes them with a similarity provider)"
        )
    return np.asarray(similarities)


def _retrieved(
    pool: pd.DataFrame, k: int, similarities: np.ndarray | None, most_similar: bool, name: str
) -> np.ndarray:
    """Pool index labels of the k most/least similar rows, by ascending similarity (prompt order)."""
    similarities = _need_similarities(pool, similarities, name)
    try:
        positions = ranked_by_similarity(similarities, k, most_similar)
    except ValueError as error:
        raise PromptError(str(error)) from error
    return pool.index.to_numpy()[positions]


def _register_ranked(name: str, most_similar: bool, doc: str) -> None:
    """Register a strategy that takes the k pool rows ranked highest (or lowest) by the injected similarity."""

    def strategy(
        test: pd.Series,
        pool: pd.DataFrame,
        k: int,
        rng: np.random.Generator,
        similarities: np.ndarray | None = None,
        **options,
    ) -> np.ndarray:
        return _retrieved(pool, k, similarities, most_similar, name)

    strategy.__name__, strategy.__doc__ = f"{name}_demos", doc
    register_strategy(name)(strategy)


_register_ranked(
    "nearest",
    True,
    "The k pool examples most similar to the test input (cosine of sentence embeddings, one value per pool row in "
    "``similarities``), by ascending similarity: the most similar is last, next to the test input.",
)
_register_ranked(
    "farthest", False, "The k pool examples least similar to the test input, by ascending similarity (least first)."
)
_register_ranked(
    "bm25",
    True,
    "The k pool examples with the highest BM25 score of the test input (query) against their text, by ascending "
    "score (the best last); see :mod:`kicl.prompts.bm25`.",
)
_register_ranked(
    "model_kernel",
    True,
    "The k pool examples with the largest prediction similarity P(o|x_test)ᵀP(o|x_i) of the model itself (the "
    "paper's Eq. 9 kernel), by ascending similarity (the most similar last).",
)


@register_strategy("similarity_band")
def similarity_band_demos(
    test: pd.Series,
    pool: pd.DataFrame,
    k: int,
    rng: np.random.Generator,
    similarities: np.ndarray | None = None,
    similarity_band: Sequence[float] = (0.0, 1.0),
    **options,
) -> np.ndarray:
    """k pool examples drawn uniformly without replacement (in drawn order) from the rows whose quantile of encoder
    cosine to the test input (:func:`kicl.prompts.retrieval.similarity_quantiles`) lies in [lo, hi]."""
    similarities = _need_similarities(pool, similarities, "similarity_band")
    lo, hi = (float(v) for v in similarity_band)
    quantiles = similarity_quantiles(similarities)
    members = np.flatnonzero((quantiles >= lo - 1e-12) & (quantiles <= hi + 1e-12))
    if k > len(members):
        raise PromptError(
            f"protocol.similarity_band [{lo}, {hi}]: {len(members)} of the {len(pool)} pool examples lie in the "
            f"band, {k} demonstrations requested; widen the band or raise protocol.retrieval_pool_size"
        )
    return pool.index.to_numpy()[members[rng.choice(len(members), size=k, replace=False)]]


def resolve_protocol(protocol: Mapping, n_classes: int | None = None) -> dict:
    """A condition's effective protocol with the schema defaults filled in, checked against the registered
    strategies (raises PromptError naming ``protocol.<key>``; ``n_classes`` also checks ``abstract_labels``)."""
    return effective_protocol(protocol, STRATEGIES, n_classes)


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


def _similarity_providers(
    protocol: dict, embed: EmbedFunction | None, given: Mapping[str, SimilarityProvider] | None, where: str
) -> dict[str, SimilarityProvider]:
    """The provider of each similarity kind the protocol needs (:func:`needed_similarities`)."""
    providers = dict(given or {})
    unknown = sorted(set(providers) - set(SIMILARITY_KINDS))
    if unknown:
        raise PromptError(f"{where}: unknown similarity provider kind(s) {unknown}; known: {list(SIMILARITY_KINDS)}")
    needed = needed_similarities(protocol)
    if "encoder" in needed and "encoder" not in providers:
        if embed is None:
            culprit = (
                f"protocol.demo_strategy {protocol['demo_strategy']!r}"
                if selection_similarity(protocol["demo_strategy"]) == "encoder"
                else f"protocol.demo_order {protocol['demo_order']!r}"
            )
            raise PromptError(
                f"{where}: {culprit} needs sentence embeddings (protocol.retrieval_encoder) but no embedding "
                "function was given"
            )
        providers["encoder"] = encoder_similarity(embed)
    elif "encoder" not in providers and embed is not None:  # available: removes near-copies of ranking strategies
        providers["encoder"] = encoder_similarity(embed)
    if "bm25" in needed and "bm25" not in providers:
        providers["bm25"] = bm25_similarity
    if "model_kernel" in needed and "model_kernel" not in providers:
        raise PromptError(
            f"{where}: protocol.demo_strategy 'model_kernel' needs the model's prediction similarity "
            "P(o|x_test)ᵀP(o|x_i) but no model_kernel similarity provider was given"
        )
    return providers


def _test_inputs(protocol: dict, task: str, originals: list[str], indices: np.ndarray, where: str) -> list[str]:
    """The test inputs as shown under ``protocol.test_inputs`` (:mod:`kicl.prompts.ood`)."""
    mode, seed = protocol["test_inputs"], int(protocol["seed"])
    if mode == "original":
        return list(originals)
    if mode == "typos":
        return [
            inject_typos(text, float(protocol["typo_rate"]), control_rng(seed, row, TYPO_STREAM))
            for text, row in zip(originals, indices)
        ]
    if mode == "rare_words":
        return [
            substitute_rare_words(
                text,
                float(protocol["rare_word_rate"]),
                float(protocol["rare_word_gap"]),
                control_rng(seed, row, RARE_WORD_STREAM),
            )[0]
            for text, row in zip(originals, indices)
        ]
    path, kind = rewrites_path(protocol, task), str(protocol["rewrite_type"])
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


def build_prompt_set(
    task: str,
    task_spec: dict,
    model: str,
    tokenizer,
    eval_table: pd.DataFrame,
    pool: pd.DataFrame,
    protocol: dict,
    max_length: int | None,
    tokenizer_name: str = "",
    embed: EmbedFunction | None = None,
    similarity_providers: Mapping[str, SimilarityProvider] | None = None,
    other_pool: pd.DataFrame | None = None,
) -> tuple[dict, list[dict]]:
    """Meta dict and prompt records of one (model, task, condition), following the prompt-file contract.

    ``protocol``: the condition's effective protocol (keys it lacks take the schema defaults).
    ``similarity_providers``: kind (``encoder``, ``bm25``, ``model_kernel``) -> ``(test_texts, pool_texts) ->
    (n_test, n_pool)`` matrix, for the kinds :func:`~kicl.prompts.retrieval.needed_similarities` names; each is
    called once. ``embed`` (texts -> embeddings) is the shorthand for the encoder-cosine provider, and BM25 is
    built in; the ``model_kernel`` provider must be given. ``other_pool``: another task's demonstration pool
    (normalised table), needed by ``protocol.inputs: other_task``.
    """
    where = f"task {task!r}, model {model!r}"
    template, task_verbalizers = task_spec["template"], task_spec["verbalizers"]
    check_template(template, task_verbalizers, f"tasks.{task}")
    n_classes = len(task_spec["label_names"])
    protocol = effective_protocol(protocol, STRATEGIES, n_classes)
    pieces = PieceTokenizer(tokenizer, where)
    readout = protocol["readout"]
    label_mode, input_mode = protocol["labels"], protocol["inputs"]
    verbalizers = list(task_verbalizers)
    if label_mode == "abstract":
        verbalizers = list(protocol["abstract_labels"][:n_classes])
        check_template(template, verbalizers, "protocol.abstract_labels")
        try:
            label_token_ids = pieces.label_token_ids(verbalizers, readout)
        except VerbalizerError as error:
            raise VerbalizerError(f"protocol.abstract_labels: {error}") from error
    else:
        label_token_ids = pieces.label_token_ids(verbalizers, readout)
    strategy_name = protocol["demo_strategy"]
    strategy = STRATEGIES[strategy_name]
    k, seed = int(protocol["n_demos"]), int(protocol["seed"])
    policy = protocol["context_policy"]
    max_length = protocol["max_length"] or max_length
    if input_mode == "other_task" and other_pool is None:
        raise PromptError(
            f"{where}: protocol.inputs 'other_task' needs the demonstration pool of protocol.other_task "
            f"{protocol['other_task']!r}, but none was given"
        )

    indices, splits, report = select_eval_points(len(eval_table), protocol["n_select"], protocol["n_heldout"], seed)
    if len(indices) == 0:
        raise PromptError(f"{where}: no test points (protocol.n_select + protocol.n_heldout is 0)")
    if report["capped"]:
        log.warning(
            "%s: the evaluation split %r has %d rows < n_select + n_heldout = %d; using %d selection + %d held-out",
            where,
            task_spec["eval_split"],
            report["eval_size"],
            protocol["n_select"] + protocol["n_heldout"],
            report["n_select"],
            report["n_heldout"],
        )
    originals = [str(eval_table["text"].iloc[int(i)]) for i in indices]
    shown_tests = _test_inputs(protocol, task, originals, indices, where)
    providers = _similarity_providers(protocol, embed, similarity_providers, where)

    # the demonstrations are chosen on the ORIGINAL test inputs (every test-input control keeps them)
    select_kind = selection_similarity(strategy_name)
    selection, encoder_matrix = None, None
    if select_kind:
        pool = cap_pool(pool, protocol["retrieval_pool_size"], seed)
        selection = _similarities(providers, select_kind, originals, pool["text"].astype(str).tolist(), where)
        log.info("%s: %s similarity of %d test inputs to %d pool examples", where, select_kind, len(indices), len(pool))
    if select_kind == "encoder":
        encoder_matrix = selection
    elif strategy_name in NEAR_COPY_ENCODER_STRATEGIES and "encoder" in providers:  # for the near-copy filter
        encoder_matrix = _similarities(providers, "encoder", originals, pool["text"].astype(str).tolist(), where)
    near_copies = encoder_matrix is not None  # near-copy removal by encoder cosine too (capped pools only)
    pool_position = {index: position for position, index in enumerate(pool.index)}
    dedup_similarity = float(protocol["dedup_similarity"])
    pool_keys = np.array([normalised_text(text) for text in pool["text"].astype(str)])
    options = {"n_classes": n_classes, "similarity_band": protocol["similarity_band"]}

    # 1. the demonstration set of every test point: Generator([seed, test_index]) and nothing else
    chosen_sets, n_removed, n_prompts_removed = [], 0, 0
    for prompt_id, row_index in enumerate(indices):
        test = eval_table.iloc[int(row_index)]
        rng = np.random.default_rng([seed, int(row_index)])
        # the test input itself never serves as its own demonstration: copies up to case, @user handles, URLs,
        # punctuation and whitespace leave the pool for every strategy, near-copies (encoder cosine >=
        # protocol.dedup_similarity) for the ranking strategies when the encoder is given
        remove = pool_keys == normalised_text(originals[prompt_id])
        similarities = None if selection is None else selection[prompt_id]
        if near_copies:
            remove |= encoder_matrix[prompt_id] >= dedup_similarity
        candidates = pool
        if remove.any():  # no copy in the pool: the pool is used as it is (prompts unchanged by this check)
            candidates = pool[~remove]
            n_removed += int(remove.sum())
            n_prompts_removed += 1
        if similarities is not None:
            options["similarities"] = similarities[~remove]
        chosen_sets.append([int(i) for i in strategy(test, candidates, k, rng, **options)])

    # 2. encoder similarities of the chosen demonstrations, for the sorted orders (the set is already fixed)
    order_similarity = None
    if protocol["demo_order"] in SORTED_ORDERS:
        if encoder_matrix is not None:
            order_similarity = [
                {i: float(encoder_matrix[p, pool_position[i]]) for i in chosen} for p, chosen in enumerate(chosen_sets)
            ]
        else:
            union = sorted({i for chosen in chosen_sets for i in chosen})
            column = {index: position for position, index in enumerate(union)}
            matrix = _similarities(providers, "encoder", originals, pool.loc[union, "text"].astype(str).tolist(), where)
            order_similarity = [
                {i: float(matrix[p, column[i]]) for i in chosen} for p, chosen in enumerate(chosen_sets)
            ]

    def make_demos(native: list[int], ordered: list[int], row_index: int) -> tuple[list[Demo], list[dict]]:
        """The demonstrations shown in prompt order ``ordered``, the label and input controls applied to the same
        rows in their native (selection) order ``native`` and keyed by pool index: every ordering of one set shows
        the same (input, shown label) pairs."""
        true_labels = [int(pool.at[i, "label"]) for i in native]
        shown_labels = control_labels(
            true_labels,
            label_mode,
            n_classes,
            control_rng(seed, row_index, LABEL_STREAM),
            float(protocol["label_noise"]),
        )
        input_rng = control_rng(seed, row_index, INPUT_STREAM)
        if input_mode == "other_task":
            positions = other_task_rows(len(native), len(other_pool), input_rng, str(protocol["other_task"]))
            inputs = [(int(other_pool.index[j]), str(other_pool["text"].iloc[j]), None) for j in positions]
        else:
            source = permuted_positions(len(native), input_rng) if input_mode == "permuted" else range(len(native))
            inputs = [(native[j], str(pool.at[native[j], "text"]), true_labels[j]) for j in source]
        by_row = {
            label_row: (Demo(index, label, text), {"true_label": true_label, "label_pool_index": int(label_row)})
            for (index, text, true_label), label, label_row in zip(inputs, shown_labels, native)
        }
        return [by_row[i][0] for i in ordered], [by_row[i][1] for i in ordered]

    # 3. order, controls, tokens
    records, n_dropped_prompts, n_dropped_demos = [], 0, 0
    demo_order, order_seed = protocol["demo_order"], protocol["order_seed"]
    for prompt_id, (row_index, split) in enumerate(zip(indices, splits)):
        row_index = int(row_index)
        chosen = chosen_sets[prompt_id]
        permutation_rng = None if order_seed is None else control_rng(seed, row_index, ORDER_STREAM, order_seed)
        ordered = order_demos(
            chosen,
            demo_order,
            None if order_similarity is None else [order_similarity[prompt_id][i] for i in chosen],
            permutation_rng,
        )
        test_text = shown_tests[prompt_id]
        demos, extras = make_demos(chosen, ordered, row_index)
        prompt = build_prompt(pieces, template, verbalizers, demos, test_text)
        while max_length is not None and len(prompt["input_ids"]) > max_length:
            message = (
                f"{where}: prompt {prompt_id} (test_index {row_index}) has {len(prompt['input_ids'])} tokens "
                f"with {len(demos)} demonstrations, more than the model's context length {max_length}"
            )
            if policy == "error" or not demos:
                raise PromptError(
                    message + ". Reduce protocol.n_demos, or set protocol.context_policy: drop to drop demonstrations "
                    "from the front until the prompt fits."
                )
            ordered = ordered[1:]  # the controls are applied anew to the kept demonstrations (native order)
            kept = set(ordered)
            demos, extras = make_demos([i for i in chosen if i in kept], ordered, row_index)
            n_dropped_demos += 1
            prompt = build_prompt(pieces, template, verbalizers, demos, test_text)
        n_dropped_prompts += len(demos) < k
        for record, extra in zip(prompt["demos"], extras):
            record.update(extra)
        records.append(
            {
                "prompt_id": prompt_id,
                "split": str(split),
                "test_index": row_index,
                "gold": int(eval_table["label"].iloc[row_index]),
                "n_demos": len(demos),
                **prompt,
                "original_test_text": originals[prompt_id],
                "test_input_changed": input_changed(originals[prompt_id], test_text),
            }
        )
        # each kept demonstration's similarity to the test input (of the row chosen at its position), prompt order
        if selection is not None:
            records[-1]["demo_similarity"] = [float(selection[prompt_id, pool_position[i]]) for i in ordered]
            if order_similarity is not None and select_kind != "encoder":
                records[-1]["demo_encoder_similarity"] = [order_similarity[prompt_id][i] for i in ordered]
        elif order_similarity is not None:
            records[-1]["demo_similarity"] = [order_similarity[prompt_id][i] for i in ordered]
    if n_dropped_demos:
        log.warning(
            "%s: dropped %d demonstrations from %d prompts to fit %d tokens",
            where,
            n_dropped_demos,
            n_dropped_prompts,
            max_length,
        )
    lengths = np.array([len(r["input_ids"]) for r in records])
    meta = {
        "task": task,
        "model": model,
        "label_names": list(task_spec["label_names"]),
        "verbalizers": list(verbalizers),
        "label_token_ids": [int(i) for i in label_token_ids],
        "readout": readout,
        "template": dict(template),
        "n_demos": k,
        "seed": seed,
        "strategy": strategy_name,
        "tokenizer": tokenizer_name or getattr(tokenizer, "name_or_path", ""),
        **report,
        "eval_split": task_spec["eval_split"],
        "demo_split": task_spec["demo_split"],
        "pool_size": len(pool),
        "n_prompts": len(records),
        "special_prefix_ids": [int(i) for i in pieces.prefix_ids],
        "context_policy": policy,
        "max_length": max_length,
        "n_prompts_with_dropped_demos": int(n_dropped_prompts),
        "prompt_length": {"min": int(lengths.min()), "mean": float(lengths.mean()), "max": int(lengths.max())},
        "eval_label_counts": np.bincount(eval_table["label"].to_numpy()[indices], minlength=n_classes).tolist(),
        "pool_label_counts": np.bincount(pool["label"].to_numpy(), minlength=n_classes).tolist(),
        "pool_eval_text_overlap": int(len(set(pool["text"]) & set(eval_table["text"].iloc[indices]))),
        "pool_test_copies_removed": n_removed,
        "n_prompts_with_pool_copies_removed": n_prompts_removed,
        "demo_order": demo_order,
        "order_seed": order_seed,
        "labels": label_mode,
        "inputs": input_mode,
        "test_inputs": protocol["test_inputs"],
        "n_test_inputs_changed": int(sum(r["test_input_changed"] for r in records)),
        "protocol": {key: protocol[key] for key in sorted(protocol)},
    }
    if label_mode == "abstract":
        meta["task_verbalizers"] = list(task_verbalizers)
        meta["abstract_label_map"] = dict(zip(task_spec["label_names"], verbalizers))
    if label_mode == "noisy":
        meta["label_noise"] = float(protocol["label_noise"])
    if input_mode == "other_task":
        meta["other_task"] = protocol["other_task"]
    if selection is not None or order_similarity is not None:
        meta["demo_similarity_kind"] = select_kind or "encoder"
    if needs_encoder(protocol):
        meta["retrieval_encoder"] = protocol["retrieval_encoder"]
    if select_kind:
        meta["retrieval_pool_size"] = protocol["retrieval_pool_size"]
    meta["near_copy_filter"] = "normalised_text+encoder" if near_copies else "normalised_text"
    if near_copies:
        meta["dedup_similarity"] = dedup_similarity
    return meta, records


def build_prompt_files(
    task: str,
    task_spec: dict,
    model: str,
    model_manifest: str | Path | dict,
    eval_path: str | Path,
    demo_path: str | Path,
    protocol: dict,
    meta_path: str | Path,
    prompts_path: str | Path,
    encoder_manifest: str | Path | None = None,
    similarity_providers: Mapping[str, SimilarityProvider] | None = None,
    other_task_spec: dict | None = None,
    other_demo_path: str | Path | None = None,
    encoder_cache: str | Path | None = None,
) -> dict:
    """Rule entry point: load the task splits and the model's tokenizer, build and write the prompt files.

    ``encoder_manifest`` (when :func:`~kicl.prompts.retrieval.needs_encoder`): the sentence encoder that ranks or
    orders the demonstrations. ``similarity_providers``: e.g. ``{"model_kernel": provider}`` when
    :func:`~kicl.prompts.retrieval.needs_model_kernel`. ``other_task_spec`` and ``other_demo_path``
    (``protocol.inputs: other_task``): the other task's catalog entry and its prepared demonstration split.
    ``encoder_cache``: the folder of sentence embeddings shared by all jobs (kicl.data.encoders.encode_texts).
    """
    from kicl.data.encoders import encoder_embed_function
    from kicl.data.models import load_tokenizer, read_manifest

    effective = effective_protocol(protocol, STRATEGIES)
    if needs_encoder(effective) and encoder_manifest is None:
        raise PromptError(
            f"task {task!r}, model {model!r}: protocol.demo_strategy {effective['demo_strategy']!r} / demo_order "
            f"{effective['demo_order']!r} needs the manifest of protocol.retrieval_encoder "
            f"{effective['retrieval_encoder']!r}"
        )
    other_pool = None
    if effective["inputs"] == "other_task":
        if other_task_spec is None or other_demo_path is None:
            raise PromptError(
                f"task {task!r}, model {model!r}: protocol.inputs 'other_task' needs the spec and demonstration split "
                f"of protocol.other_task {effective['other_task']!r}"
            )
        other_where = f"task {effective['other_task']!r}, demo split {other_task_spec['demo_split']!r}"
        other_pool = drop_empty(load_split(other_demo_path, other_task_spec), other_where)

    manifest = read_manifest(model_manifest)
    tokenizer = load_tokenizer(manifest)
    eval_table = load_split(eval_path, task_spec)
    pool = drop_empty(load_split(demo_path, task_spec), f"task {task!r}, demo split {task_spec['demo_split']!r}")
    meta, records = build_prompt_set(
        task,
        task_spec,
        model,
        tokenizer,
        eval_table,
        pool,
        protocol,
        manifest.get("max_length"),
        tokenizer_name=manifest["path"],
        embed=encoder_embed_function(encoder_manifest, cache=encoder_cache) if encoder_manifest is not None else None,
        similarity_providers=similarity_providers,
        other_pool=other_pool,
    )
    write_prompt_set(meta, records, meta_path, prompts_path)
    log.info(
        "task %s, model %s: %d prompts (%d selection + %d held-out), %d tokens on average -> %s",
        task,
        model,
        meta["n_prompts"],
        meta["n_select"],
        meta["n_heldout"],
        meta["prompt_length"]["mean"],
        prompts_path,
    )
    return meta
