"""Snakemake adapter: run the Table 3 experiment from the `theory` config section."""

from kicl.workflow.logs import log_to

log_to(snakemake.log[0])
from kicl.theory.experiment import write_table3

write_table3(
    snakemake.params.theory,
    table_csv=snakemake.output.table,
    per_hmm_csv=snakemake.output.per_hmm,
    threads=snakemake.threads,
)
