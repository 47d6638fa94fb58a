"""Snakemake adapter: the sentence-encoder kernel-regression rows alone (no forward pass needed)."""

from kicl.workflow.logs import log_to

log_to(snakemake.log[0])
from kicl.tables.table2 import Table2Options, encoder_table

encoder_table(
    snakemake.wildcards.model,
    dict(zip(map(tuple, snakemake.params.kr_keys), snakemake.input.kr)),
    snakemake.output.csv,
    snakemake.output.md,
    snakemake.output.tex,
    Table2Options(tau=snakemake.params.tau, aliases=snakemake.params.aliases, **snakemake.params.bootstrap),
)
