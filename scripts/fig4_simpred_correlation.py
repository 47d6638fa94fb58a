"""Snakemake adapter: Fig 4, per-head correlation of kernel weights with sim_pred (Eq. 9), with nulls and intervals."""

from kicl.workflow.logs import log_to

log_to(snakemake.log[0])
from kicl.analysis.correlation import CorrelationOptions
from kicl.figures.fig4_simpred_correlation import correlation_figure

correlation_figure(
    snakemake.input.store,
    snakemake.output.png,
    snakemake.output.csv,
    pools=snakemake.params.poolings,
    splits=snakemake.params.splits,
    options=CorrelationOptions(
        unit=snakemake.params.correlation_unit,
        n_permutations=snakemake.params.n_permutations,
        n_boot=snakemake.params.n_boot,
        level=snakemake.params.level,
        seed=snakemake.params.seed,
    ),
    batch_size=snakemake.params.batch_size,
    title=f"Fig 4: {snakemake.wildcards.model} / {snakemake.wildcards.task}",
)
