"""Snakemake adapter: the conditions stage's figures of one (model, task) from its numbers CSVs
(kicl.figures.conditions)."""

from kicl.workflow.logs import log_to

log_to(snakemake.log[0])
from kicl.figures.conditions import write_condition_figures

write_condition_figures(
    dict(snakemake.input.items()),
    dict(snakemake.output.items()),
    reference=snakemake.params.reference,
    bootstrap=snakemake.params.bootstrap,
    head_maps=snakemake.params.head_maps,
)
