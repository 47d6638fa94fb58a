"""Snakemake adapter: the conditions stage's tables (Markdown, LaTeX) of one (model, task) from its numbers CSVs
(kicl.tables.conditions)."""

from kicl.workflow.logs import log_to

log_to(snakemake.log[0])
from kicl.analysis.conditions_stage import read_condition_numbers
from kicl.tables.conditions import write_condition_tables

results = read_condition_numbers(
    dict(snakemake.input.items()),
    protocols=snakemake.params.protocols,
    reference=snakemake.params.reference,
    bootstrap=snakemake.params.bootstrap,
)
write_condition_tables(results, dict(snakemake.output.items()), model=snakemake.wildcards.model)
