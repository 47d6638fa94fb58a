"""Snakemake adapter: run the Table 3 experiment from the `theory` config section."""

import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821 (snakemake is injected)
import logging

logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
from kicl.theory.experiment import write_table3

write_table3(
    snakemake.params.theory,  # noqa: F821
    table_csv=snakemake.output.table,  # noqa: F821
    per_hmm_csv=snakemake.output.per_hmm,  # noqa: F821
    threads=snakemake.threads,  # noqa: F821
)
