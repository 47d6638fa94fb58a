"""Snakemake adapter: Table 2 for one model (head chosen on select, scored on heldout, encoder-KR rows)."""

from kicl.workflow.logs import log_to

log_to(snakemake.log[0])
from kicl.tables.table2 import Table2Options, table2

table2(
    snakemake.wildcards.model,
    dict(zip(snakemake.params.tasks, snakemake.input.stores)),
    dict(zip(map(tuple, snakemake.params.kr_keys), snakemake.input.kr)),
    snakemake.output.csv,
    snakemake.output.md,
    snakemake.output.tex,
    Table2Options(
        pooling=snakemake.params.pooling,
        tau=snakemake.params.tau,
        aliases=snakemake.params.aliases,
        ties=snakemake.params.vote_ties,
        nested=snakemake.params.nested,
        **snakemake.params.bootstrap,
    ),
)
