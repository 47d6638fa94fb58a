"""Snakemake adapter: the report's summary page, listing each figure and table with the rule that made it."""

from kicl.workflow.logs import log_to

log_to(snakemake.log[0])
from kicl.workflow.summary import write_summary

write_summary(
    snakemake.params.entries,
    snakemake.output.html,
    snakemake.output.md,
    benchmark_dir=snakemake.params.benchmarks,
)
