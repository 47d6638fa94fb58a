"""Snakemake adapter: the pre-training loss curve and its CSV."""

from kicl.workflow.logs import log_to

log_to(snakemake.log[0])
from kicl.figures.theory_icl import plot_training_loss

plot_training_loss(snakemake.input.loss, snakemake.output.figure, snakemake.output.data)
