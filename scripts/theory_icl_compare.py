"""Snakemake adapter: the trained transformer's ICL against the exact posterior, Eq. 6, its heads and baselines."""

from kicl.workflow.logs import log_to

log_to(snakemake.log[0])
from kicl.theory.icl_compare import run_comparison
from kicl.theory.icl_options import TheoryICLOptions

run_comparison(
    TheoryICLOptions.of(snakemake.params.cfg),
    snakemake.input.model,
    table_csv=snakemake.output.table,
    heads_csv=snakemake.output.heads,
    table_md=snakemake.output.markdown,
    threads=snakemake.threads,
)
