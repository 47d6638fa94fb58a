"""Snakemake adapter: Fig 3a/3b, per-head reconstruction of the ICL prediction and of gold from kernel weights."""

from kicl.workflow.logs import log_to

log_to(snakemake.log[0])
from kicl.analysis.reconstruction import NullOptions
from kicl.figures.fig3_reconstruction import ReconstructionOptions, reconstruction_figure

reconstruction_figure(
    snakemake.input.store,
    snakemake.output.png_pred,
    snakemake.output.png_gold,
    snakemake.output.csv,
    ReconstructionOptions(
        pools=snakemake.params.poolings,
        splits=snakemake.params.splits,
        batch_size=snakemake.params.batch_size,
        ties=snakemake.params.vote_ties,
        color_center=snakemake.params.color_center,
        null=NullOptions(
            n_permutations=snakemake.params.n_permutations,
            seed=snakemake.params.permutation_seed,
            quantile=snakemake.params.null_quantile,
        ),
    ),
    title=f"Fig 3: {snakemake.wildcards.model} / {snakemake.wildcards.task}",
)
