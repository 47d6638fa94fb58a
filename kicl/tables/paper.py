"""The paper's published numbers (Han et al., arXiv 2305.12766, GPT-J-6B) and the one way names are matched to them.

Names (tasks, encoders, test-input types) match after lower-casing and dropping everything but letters and digits
(:func:`paper_key`), or through ``aliases`` (our name -> the paper's name, from the config).
"""

from __future__ import annotations

import re

import pandas as pd

#: the paper's tasks, in the column order of its Table 2
PAPER_TASKS = ["sst2", "mnli", "rotten_tomatoes", "tweet_eval_hate", "tweet_eval_irony", "tweet_eval_offensive"]
#: Table 1: SST-2 ICL accuracy with test inputs rewritten by GPT-3.5-turbo, by test-input type
PAPER_TABLE1_SST2 = {"none": 0.805, "rare_words": 0.677, "complex": 0.788, "typos": 0.534}
#: Table 1's column of a test-input type, by its :func:`paper_key`
PAPER_TABLE1_NAMES = {"none": "none", "rarewords": "rare_words", "rare": "rare_words", "complex": "complex"}
PAPER_TABLE1_NAMES |= {"morecomplex": "complex", "complexsentences": "complex", "typos": "typos", "typo": "typos"}
#: Table 2, by row key and task of PAPER_TASKS
PAPER_TABLE2 = {
    "icl_accuracy": [0.805, 0.383, 0.671, 0.539, 0.519, 0.542],
    "recon_agreement": [0.797, 0.597, 0.683, 0.713, 0.722, 0.753],
    "recon_accuracy": [0.750, 0.360, 0.527, 0.587, 0.522, 0.513],
    "encoder:all-MiniLM-L6-v2:cosine": [0.503, 0.321, 0.478, 0.548, 0.491, 0.588],
    "encoder:bert-base-nli-mean-tokens:cosine": [0.523, 0.325, 0.502, 0.545, 0.479, 0.597],
}
#: Table 3: L1 distance and accuracy of kernel regression vs the posterior, by number of demonstrations n
PAPER_TABLE3 = pd.DataFrame(
    {
        "n": [1, 2, 4, 8, 16, 32, 64, 128],
        "distance": [1.322, 0.942, 0.519, 0.218, 0.163, 0.085, 0.093, 0.083],
        "accuracy": [0.337, 0.532, 0.745, 0.901, 0.926, 0.968, 0.961, 0.964],
    }
)


def paper_key(name) -> str:
    """A name lower-cased, with everything but letters and digits dropped."""
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def paper_name(name, aliases: dict | None = None) -> str:
    """The :func:`paper_key` of the paper's name for `name`: through `aliases` (our name -> the paper's) if listed."""
    aliases = {paper_key(k): v for k, v in (aliases or {}).items()}
    return paper_key(aliases.get(paper_key(name), name))


def is_sst2(task: str, aliases: dict | None = None) -> bool:
    """Whether `task` is SST-2."""
    return paper_name(task, aliases) in ("sst2", "gluesst2")


def paper_table1_key(kind: str):
    """The paper's Table 1 column of an OOD type ('typos', 'rare_words', 'complex', 'none'), or None."""
    return PAPER_TABLE1_NAMES.get(paper_key(kind))


def paper_table2_value(row: str, task: str, aliases: dict | None = None):
    """The paper's Table 2 number for (row key, task), or None."""
    task_key = paper_name(task, aliases)
    columns = [paper_key(t) for t in PAPER_TASKS]
    if task_key not in columns:
        return None
    if row.startswith("encoder:"):
        _, encoder, kernel = row.split(":")
        encoder_key = paper_name(encoder, aliases)
        row = next(
            (
                r
                for r in PAPER_TABLE2
                if r.startswith("encoder:") and paper_key(r.split(":")[1]) == encoder_key and r.endswith(f":{kernel}")
            ),
            None,
        )
        if row is None:
            return None
    values = PAPER_TABLE2.get(row)
    return None if values is None else values[columns.index(task_key)]


def paper_table3_value(metric: str, n: int) -> float:
    """The paper's Table 3 ``distance`` or ``accuracy`` at n demonstrations (NaN where it has no column n)."""
    match = PAPER_TABLE3.loc[PAPER_TABLE3["n"] == n, metric]
    return float(match.iloc[0]) if len(match) else float("nan")
