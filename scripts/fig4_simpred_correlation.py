"""Snakemake adapter: Fig 4, per-head Pearson correlation of kernel weights with sim_pred (Eq. 9)."""

from kicl.workflow.logs import log_to

log_to(snakemake.log[0])
from kicl.analysis.correlation import correlation_figure

correlation_figure(
    snakemake.input.store,
    snakemake.output.png,
    snakemake.output.csv,
    pools=snakemake.params.poolings,
    splits=snakemake.params.splits,
    mode=snakemake.params.pooling,
    batch_size=snakemake.params.batch_size,
    title=f"Fig 4: {snakemake.wildcards.model} / {snakemake.wildcards.task}",
)
