"""Snakemake adapter: the causal head-ablation curves and their CSV (kicl.figures.causal)."""

from kicl.workflow.logs import log_to

log_to(snakemake.log[0])
from kicl.figures.causal import causal_figure

causal_figure(
    snakemake.input.prompts,
    snakemake.output.png,
    snakemake.output.csv,
    **snakemake.params.bootstrap,
    title=f"{snakemake.wildcards.model} / {snakemake.wildcards.task}: head ablation on held-out prompts",
)
