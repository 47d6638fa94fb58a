"""Snakemake adapter: the report's summary page, listing each figure and table with the rule that made it."""

import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821 (snakemake is injected)
import logging

logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
from kicl.workflow.summary import write_summary

write_summary(
    snakemake.params.entries,  # noqa: F821
    snakemake.output.html,  # noqa: F821
    snakemake.output.md,  # noqa: F821
    benchmark_dir=snakemake.params.benchmarks,  # noqa: F821
)
