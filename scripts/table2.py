"""Snakemake adapter: Table 2 for one model (head chosen on select, scored on heldout, encoder-KR rows)."""

from kicl.workflow.logs import log_to

log_to(snakemake.log[0])
from kicl.tables.table2 import Table2Options, table2

named = dict(snakemake.input.items())  # store_<task>, kr_<encoder>_<task>
tasks, encoders = snakemake.params.tasks, snakemake.params.encoders
table2(
    snakemake.wildcards.model,
    {task: named[f"store_{task}"] for task in tasks},
    {(encoder, task): named[f"kr_{encoder}_{task}"] for encoder in encoders for task in tasks},
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
