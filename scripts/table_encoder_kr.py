"""Snakemake adapter: the sentence-encoder kernel-regression rows alone (no forward pass needed)."""

from kicl.workflow.logs import log_to

log_to(snakemake.log[0])
from kicl.tables.table2 import Table2Options, encoder_table

named = dict(snakemake.input.items())  # kr_<encoder>_<task>
tasks, encoders = snakemake.params.tasks, snakemake.params.encoders
encoder_table(
    snakemake.wildcards.model,
    {(encoder, task): named[f"kr_{encoder}_{task}"] for encoder in encoders for task in tasks},
    snakemake.output.csv,
    snakemake.output.md,
    snakemake.output.tex,
    Table2Options(tau=snakemake.params.tau, aliases=snakemake.params.aliases, **snakemake.params.bootstrap),
)
