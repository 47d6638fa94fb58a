"""Check the Table 3 targets of issue 2 on the outputs of `snakemake -c2 results/theory/table3.csv`.

Targets: accuracy within ±0.05 of the paper for every n ≥ 8; L1 distance ≥ 1.1 at n = 1 and ≤ 0.12 at
n = 128; the theory job under 2 minutes (Snakemake's benchmark file). Run from the repository root:

    .venv/bin/snakemake -c2 results/theory/table3.csv && .venv/bin/python benchmarks/check_theory_table3.py

Exit status 1 lists every missed target.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from kicl.tables.paper import PAPER_TABLE3

TABLE = Path("results/theory/table3.csv")
BENCHMARK = Path("benchmarks/out/theory_table3.tsv")
ACCURACY_TOLERANCE, L1_AT_1, L1_AT_128, SECONDS = 0.05, 1.1, 0.12, 120.0


def main() -> int:
    summary = pd.read_csv(TABLE)
    ours = summary[summary["method"] == "kernel_regression"].set_index("n")
    paper = PAPER_TABLE3.set_index("n")
    failures = []
    print(f"{'n':>4} {'paper acc':>9} {'ours acc':>9} {'diff':>7} {'paper L1':>9} {'ours L1':>8}")
    for n in paper.index:
        if n not in ours.index:
            failures.append(f"n = {n} missing from {TABLE}")
            continue
        difference = ours.loc[n, "acc_posterior_mean"] - paper.loc[n, "accuracy"]
        print(
            f"{n:>4} {paper.loc[n, 'accuracy']:>9.3f} {ours.loc[n, 'acc_posterior_mean']:>9.3f} {difference:>+7.3f}"
            f" {paper.loc[n, 'distance']:>9.3f} {ours.loc[n, 'l1_mean']:>8.3f}"
        )
        if n >= 8 and abs(difference) > ACCURACY_TOLERANCE:
            failures.append(f"accuracy at n = {n} is {difference:+.3f} from the paper (allowed ±{ACCURACY_TOLERANCE})")
    if 1 in ours.index and ours.loc[1, "l1_mean"] < L1_AT_1:
        failures.append(f"L1 at n = 1 is {ours.loc[1, 'l1_mean']:.3f} < {L1_AT_1}")
    if 128 in ours.index and ours.loc[128, "l1_mean"] > L1_AT_128:
        failures.append(f"L1 at n = 128 is {ours.loc[128, 'l1_mean']:.3f} > {L1_AT_128}")
    seconds = float(pd.read_csv(BENCHMARK, sep="\t")["s"].iloc[0])
    print(f"theory_table3 job: {seconds:.1f} s wall ({BENCHMARK})")
    if seconds > SECONDS:
        failures.append(f"theory_table3 took {seconds:.1f} s > {SECONDS} s")
    for failure in failures:
        print("FAIL:", failure)
    print("all Table 3 targets met" if not failures else f"{len(failures)} target(s) missed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
