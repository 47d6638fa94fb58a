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
(protocol seed, test index), so a prompt does not depend on which other prompts are built. The retrieval
strategies ``nearest``/``farthest`` rank the pool by sentence-encoder cosine to the test input and place the
chosen demonstrations by ascending similarity (most similar last, next to the test input); see
:mod:`kicl.prompts.retrieval`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kicl.data.tasks import drop_empty, load_split
from kicl.prompts.files import write_prompt_set
from kicl.prompts.pieces import (
    PieceTokenizer,
    PromptError,
    VerbalizerError,
    query_ids,
    render_query,
    split_trailing_spaces,
)
from kicl.prompts.retrieval import EmbedFunction, cap_pool, embed_once, is_retrieval, ranked_by_similarity

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


def _retrieved(
    pool: pd.DataFrame, k: int, similarities: np.ndarray | None, most_similar: bool, name: str
) -> np.ndarray:
    """Pool index labels of the k most/least similar rows, by ascending similarity (prompt order)."""
    if similarities is None or len(similarities) != len(pool):
        raise PromptError(
            f"the {name} strategy needs the test input's similarity to every pool example "
            "(build_prompt_set computes them when given an embedding function)"
        )
    try:
        positions = ranked_by_similarity(similarities, k, most_similar)
    except ValueError as error:
        raise PromptError(str(error)) from error
    return pool.index.to_numpy()[positions]


@register_strategy("nearest")
def nearest_demos(
    test: pd.Series,
    pool: pd.DataFrame,
    k: int,
    rng: np.random.Generator,
    similarities: np.ndarray | None = None,
    **options,
) -> np.ndarray:
    """The k pool examples most similar to the test input (cosine of sentence embeddings, one value per pool
    row in ``similarities``), by ascending similarity: the most similar is last, next to the test input."""
    return _retrieved(pool, k, similarities, True, "nearest")


@register_strategy("farthest")
def farthest_demos(
    test: pd.Series,
    pool: pd.DataFrame,
    k: int,
    rng: np.random.Generator,
    similarities: np.ndarray | None = None,
    **options,
) -> np.ndarray:
    """The k pool examples least similar to the test input, by ascending similarity (least similar first)."""
    return _retrieved(pool, k, similarities, False, "farthest")


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
) -> tuple[dict, list[dict]]:
    """Meta dict and prompt records of one (model, task), following the prompt-file contract.

    ``embed`` (texts -> embeddings) is needed by the retrieval strategies only: it is called once, on the
    selected test inputs and the (possibly capped, ``protocol.retrieval_pool_size``) pool.
    """
    where = f"task {task!r}, model {model!r}"
    template, verbalizers = task_spec["template"], task_spec["verbalizers"]
    check_template(template, verbalizers, f"tasks.{task}")
    pieces = PieceTokenizer(tokenizer, where)
    readout = protocol.get("readout", "single_token")
    label_token_ids = pieces.label_token_ids(verbalizers, readout)
    strategy_name = protocol.get("demo_strategy", "random")
    if strategy_name not in STRATEGIES:
        raise PromptError(f"protocol.demo_strategy {strategy_name!r} is unknown; available: {sorted(STRATEGIES)}")
    strategy = STRATEGIES[strategy_name]
    k, seed = int(protocol["n_demos"]), int(protocol["seed"])
    policy = protocol.get("context_policy", "error")
    max_length = protocol.get("max_length") or max_length
    n_classes = len(task_spec["label_names"])

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
    retrieval = is_retrieval(strategy_name)
    if retrieval:
        if embed is None:
            raise PromptError(
                f"{where}: protocol.demo_strategy {strategy_name!r} needs sentence embeddings "
                "(protocol.retrieval_encoder) but no embedding function was given"
            )
        pool = cap_pool(pool, protocol.get("retrieval_pool_size"), seed)
        test_vectors, pool_vectors = embed_once(
            embed, [str(eval_table["text"].iloc[int(i)]) for i in indices], pool["text"].astype(str).tolist()
        )
        pool_position = {index: position for position, index in enumerate(pool.index)}
        if protocol.get("dedup_similarity") is None:
            raise PromptError(f"{where}: protocol.dedup_similarity is not set (the schema's default fills it in)")
        dedup_similarity = float(protocol["dedup_similarity"])
        log.info(
            "%s: embedded %d test inputs and %d pool examples for %s retrieval",
            where,
            len(indices),
            len(pool),
            strategy_name,
        )
    pool_texts = pool["text"].astype(str).to_numpy()
    records, n_dropped_prompts, n_dropped_demos, n_removed, n_prompts_removed = [], 0, 0, 0, 0
    for prompt_id, (row_index, split) in enumerate(zip(indices, splits)):
        test = eval_table.iloc[int(row_index)]
        rng = np.random.default_rng([seed, int(row_index)])
        # the test input itself never serves as its own demonstration: exact copies leave the pool for every
        # strategy, near-copies (cosine >= protocol.dedup_similarity) for the retrieval strategies
        remove = pool_texts == str(test["text"])
        if retrieval:
            similarities = pool_vectors @ test_vectors[prompt_id]
            remove |= similarities >= dedup_similarity
        candidates = pool
        if remove.any():  # no copy in the pool: the pool is used as it is (prompts unchanged by this check)
            candidates = pool[~remove]
            n_removed += int(remove.sum())
            n_prompts_removed += 1
        if retrieval:
            chosen = strategy(test, candidates, k, rng, n_classes=n_classes, similarities=similarities[~remove])
        else:
            chosen = strategy(test, candidates, k, rng, n_classes=n_classes)
        demos = [Demo(int(i), int(pool.at[i, "label"]), str(pool.at[i, "text"])) for i in chosen]
        prompt = build_prompt(pieces, template, verbalizers, demos, str(test["text"]))
        while max_length is not None and len(prompt["input_ids"]) > max_length:
            message = (
                f"{where}: prompt {prompt_id} (test_index {int(row_index)}) has {len(prompt['input_ids'])} tokens "
                f"with {len(demos)} demonstrations, more than the model's context length {max_length}"
            )
            if policy == "error" or not demos:
                raise PromptError(
                    message + ". Reduce protocol.n_demos, or set protocol.context_policy: drop to drop demonstrations "
                    "from the front until the prompt fits."
                )
            demos = demos[1:]
            n_dropped_demos += 1
            prompt = build_prompt(pieces, template, verbalizers, demos, str(test["text"]))
        n_dropped_prompts += len(demos) < k
        records.append(
            {
                "prompt_id": prompt_id,
                "split": str(split),
                "test_index": int(row_index),
                "gold": int(test["label"]),
                "n_demos": len(demos),
                **prompt,
            }
        )
        if retrieval:  # extra field: each kept demonstration's cosine to the test input, in prompt order
            records[-1]["demo_similarity"] = [float(similarities[pool_position[d.pool_index]]) for d in demos]
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
    }
    if retrieval:
        meta["retrieval_encoder"] = protocol.get("retrieval_encoder")
        meta["retrieval_pool_size"] = protocol.get("retrieval_pool_size")
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
) -> dict:
    """Rule entry point: load the task splits and the model's tokenizer, build and write the prompt files.

    ``encoder_manifest`` (retrieval strategies only): the sentence encoder that ranks the demonstrations.
    """
    from kicl.data.encoders import encoder_embed_function
    from kicl.data.models import load_tokenizer, read_manifest

    strategy = protocol.get("demo_strategy", "random")
    if is_retrieval(strategy) and encoder_manifest is None:
        raise PromptError(
            f"task {task!r}, model {model!r}: protocol.demo_strategy {strategy!r} needs the manifest "
            f"of protocol.retrieval_encoder {protocol.get('retrieval_encoder')!r}"
        )

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
        embed=encoder_embed_function(encoder_manifest) if encoder_manifest is not None else None,
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
