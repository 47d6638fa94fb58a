"""Snakemake adapter: the comparison figure against n and its CSV."""

from kicl.workflow.logs import log_to

log_to(snakemake.log[0])
from kicl.figures.theory_icl import plot_comparison

plot_comparison(snakemake.input.table, snakemake.output.figure, snakemake.output.data)
