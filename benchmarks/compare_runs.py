"""Compare two runs' results folders file by file: every array of every forward store (``*.zarr``), and every
CSV/Markdown/TeX/JSON file byte for byte, then again with head labels written ``L{l} H{h}`` (before issue 22)
read as ``L{l}H{h}``. Results of the conditions stage under ``ablation/`` (before issue 22) are looked up under
``conditions/``. Used to show that a refactor leaves a run's numbers unchanged:

    python benchmarks/compare_runs.py OLD/results NEW/results

Prints the counts (identical, identical after head labels, differ, missing) and names each file that differs or
is missing; timing columns (``seconds_*``, ``wall_s``, ``elapsed_s``) make a file differ, so read those by hand.
"""

import re
import sys
from pathlib import Path

import numpy as np
import zarr

#: result folders renamed since: old prefix -> new prefix
RENAMES = [("ablation/", "conditions/")]
HEAD = re.compile(r"L(\d+) H(\d+)")
TEXT = {".csv", ".md", ".tex", ".json", ".jsonl"}
SKIP = ("summary/", "report", ".parts/", "simpred/", "embeddings/")


def new_name(rel: str) -> str:
    """The path in the new results of a path in the old ones."""
    for old, new in RENAMES:
        if rel.startswith(old):
            return new + rel[len(old) :]
    return rel


def compare_store(a: Path, b: Path) -> list[str]:
    """What differs between two forward stores: their array names, then each array's values (NaN equal to NaN)."""
    za, zb = zarr.open_group(str(a), mode="r"), zarr.open_group(str(b), mode="r")
    problems = []
    names_a = sorted(name for name, _ in za.arrays())
    names_b = sorted(name for name, _ in zb.arrays())
    if names_a != names_b:
        problems.append(f"arrays differ: {set(names_a) ^ set(names_b)}")
    for name in set(names_a) & set(names_b):
        x, y = np.asarray(za[name][...]), np.asarray(zb[name][...])
        if x.shape != y.shape or not np.array_equal(x, y, equal_nan=x.dtype.kind == "f"):
            problems.append(f"array {name} differs")
    return problems


def main(old: str, new: str) -> None:
    """Compare the results folders ``old`` and ``new`` and print what differs."""
    old, new = Path(old), Path(new)
    same = norm = 0
    differ, missing = [], []
    for path in sorted(old.rglob("*")):
        rel = str(path.relative_to(old))
        if any(s in rel for s in SKIP) or ".zarr/" in rel:
            continue
        other = new / new_name(rel)
        if path.suffix == ".zarr":
            if not other.exists():
                missing.append(rel)
                continue
            problems = compare_store(path, other)
            if problems:
                differ.append(f"{rel}: {problems}")
            same += not problems
        elif path.is_file() and path.suffix in TEXT:
            if not other.exists():
                missing.append(rel)
            elif path.read_bytes() == other.read_bytes():
                same += 1
            elif HEAD.sub(r"L\1H\2", path.read_text()) == HEAD.sub(r"L\1H\2", other.read_text()):
                norm += 1
            else:
                differ.append(rel)
    print(f"identical: {same}; identical after head labels: {norm}; differ: {len(differ)}; missing: {len(missing)}")
    for rel in differ:
        print("  DIFFER", rel)
    for rel in missing:
        print("  MISSING", rel)


if __name__ == "__main__":
    main(*sys.argv[1:3])
