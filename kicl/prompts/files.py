"""The prompt-file contract: THE reader and writer of ``meta.json`` + ``prompts.jsonl`` (docs/prompt-files.md).

One set of checks serves every stage: the prompt builder checks what it is about to write, the forward pass,
the encoder embedding and the Slurm resource estimate check what they read. Standard library only (plus
:mod:`kicl.fileio`), so a reader of prompt files never imports the prompt builder, pandas or a tokenizer.

Checks, each naming the file, the prompt and the culprit:

* meta: the keys of :data:`META_KEYS`; as many ``label_token_ids`` as ``label_names``;
* every record: the keys of :data:`PROMPT_KEYS` and, per demonstration, :data:`DEMO_KEYS`; ``prompt_id`` equal
  to its row number; ``split`` one of :data:`SPLITS`; non-empty ``input_ids``; every span inside the prompt;
  ``label_pos`` between the demonstration's input and the end; ``n_demos`` (when present) equal to the number
  of demonstrations;
* with the meta: ``gold`` and every demonstration label a label index; ``meta.n_prompts`` (when present) equal
  to the number of records.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from kicl.fileio import atomic_path

#: keys every meta.json has (the builder writes more: docs/prompt-files.md)
META_KEYS = ("task", "model", "label_names", "verbalizers", "label_token_ids", "readout", "template")
#: keys every prompt record has (the builder also writes ``text`` and ``n_demos``; retrieval ``demo_similarity``)
PROMPT_KEYS = ("prompt_id", "split", "test_index", "gold", "input_ids", "test_text", "test_span", "demos")
#: keys every demonstration of a record has (``label_span`` only for multi-token label words)
DEMO_KEYS = ("pool_index", "label", "text", "block_span", "input_span", "label_pos", "delim_span")
#: the evaluation subsets a prompt belongs to: head selection, and the held-out set Table 2 reports
SPLITS = ("select", "heldout")


class PromptFileError(ValueError):
    """A prompt file that breaks the contract; the message names the file, the prompt and the key."""


# ---- checks ----------------------------------------------------------------------------------------


def check_meta(meta: dict, where: str) -> None:
    """Raise PromptFileError unless ``meta`` has the contract's keys and matching label lists."""
    if not isinstance(meta, dict):
        raise PromptFileError(f"{where}: not a JSON object")
    missing = [key for key in META_KEYS if key not in meta]
    if missing:
        raise PromptFileError(f"{where}: missing {', '.join(map(repr, missing))} (prompt-file contract)")
    if not meta["label_names"] or not meta["label_token_ids"]:
        raise PromptFileError(f"{where}: empty 'label_names' or 'label_token_ids'")
    if len(meta["label_names"]) != len(meta["label_token_ids"]):
        raise PromptFileError(f"{where}: label_names and label_token_ids differ in length")


def check_record(record: dict, row: int, where: str, n_labels: int | None = None) -> None:
    """Raise PromptFileError unless ``record`` (row ``row`` of the file) keeps the contract."""
    name = f"{where}, prompt {row}"
    if not isinstance(record, dict):
        raise PromptFileError(f"{name}: not a JSON object")
    missing = [key for key in PROMPT_KEYS if key not in record]
    if missing:
        raise PromptFileError(f"{name}: missing {', '.join(map(repr, missing))} (prompt-file contract)")
    if record["prompt_id"] != row:
        raise PromptFileError(f"{name}: prompt_id {record['prompt_id']} is not its row number")
    if record["split"] not in SPLITS:
        raise PromptFileError(f"{name}: split {record['split']!r} is not one of {list(SPLITS)}")
    length = len(record["input_ids"])
    if length == 0:
        raise PromptFileError(f"{name}: empty input_ids")
    demos = record["demos"]
    if "n_demos" in record and record["n_demos"] != len(demos):
        raise PromptFileError(f"{name}: n_demos {record['n_demos']} but {len(demos)} demonstrations")
    if n_labels is not None and not 0 <= record["gold"] < n_labels:
        raise PromptFileError(f"{name}: gold {record['gold']} is not a label index (meta has {n_labels} labels)")
    _check_span(record["test_span"], length, f"{name}: test_span")
    for position, demo in enumerate(demos):
        where_demo = f"{name}, demonstration {position}"
        missing = [key for key in DEMO_KEYS if key not in demo]
        if missing:
            raise PromptFileError(f"{where_demo}: missing {', '.join(map(repr, missing))} (prompt-file contract)")
        for key in ("input_span", "block_span", "delim_span"):
            _check_span(demo[key], length, f"{name}: {key}")
        if not demo["input_span"][0] <= demo["label_pos"] < length:
            raise PromptFileError(f"{name}: label_pos {demo['label_pos']} is outside [input start, length)")
        if n_labels is not None and not 0 <= demo["label"] < n_labels:
            raise PromptFileError(f"{where_demo}: label {demo['label']} is not a label index")


def _check_span(span, length: int, name: str) -> None:
    if not isinstance(span, list | tuple) or len(span) != 2:
        raise PromptFileError(f"{name} {span!r} is not a [start, end) pair")
    start, end = span
    if not 0 <= start <= end <= length:
        raise PromptFileError(f"{name} [{start}, {end}) is outside the {length} tokens")


def check_prompt_set(meta: dict, records: Sequence[dict], where: str) -> None:
    """All checks of one prompt set (meta and records together)."""
    check_meta(meta, f"{where} (meta.json)")
    if not records:
        raise PromptFileError(f"{where}: no prompts")
    if "n_prompts" in meta and meta["n_prompts"] != len(records):
        raise PromptFileError(f"{where}: meta.json says n_prompts {meta['n_prompts']} but there are {len(records)}")
    for row, record in enumerate(records):
        check_record(record, row, where, n_labels=len(meta["label_names"]))


# ---- reading and writing ---------------------------------------------------------------------------


def _parse_jsonl(prompts_path: str | Path) -> list:
    records = []
    with open(prompts_path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise PromptFileError(f"{prompts_path}:{line_no}: not valid JSON ({err})") from err
    return records


def read_meta(meta_path: str | Path) -> dict:
    """The checked meta.json of a prompt set."""
    try:
        meta = json.loads(Path(meta_path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise PromptFileError(f"{meta_path}: not valid JSON ({err})") from err
    check_meta(meta, str(meta_path))
    return meta


def read_prompt_records(prompts_path: str | Path, n_labels: int | None = None) -> list[dict]:
    """The checked records of a prompts.jsonl file, in prompt_id (= file) order.

    Without the meta (``n_labels`` None) the label indices are not checked; :func:`read_prompt_set` checks them.
    """
    records = _parse_jsonl(prompts_path)
    if not records:
        raise PromptFileError(f"{prompts_path}: no prompts")
    for row, record in enumerate(records):
        check_record(record, row, str(prompts_path), n_labels)
    return records


def read_prompt_set(meta_path: str | Path, prompts_path: str | Path) -> tuple[dict, list[dict]]:
    """(meta, records) of a prompt set, with every check of the contract."""
    meta = read_meta(meta_path)
    records = _parse_jsonl(prompts_path)
    where = f"{prompts_path} (task {meta.get('task')!r}, model {meta.get('model')!r})"
    check_prompt_set(meta, records, where)
    return meta, records


def write_prompt_set(meta: dict, records: Sequence[dict], meta_path: str | Path, prompts_path: str | Path) -> None:
    """Check, then write meta.json and prompts.jsonl under temporary names and rename both."""
    check_prompt_set(
        meta, records, f"prompt set for {prompts_path} (task {meta.get('task')!r}, model {meta.get('model')!r})"
    )
    with atomic_path(prompts_path) as partial_prompts, atomic_path(meta_path) as partial_meta:
        with open(partial_prompts, "w", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        partial_meta.write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
