"""Snakemake adapter: the Table 3 figure (distance and accuracy vs n) and the CSV behind it."""

from kicl.workflow.logs import log_to

log_to(snakemake.log[0])
from kicl.figures.table3 import write_table3_figure

write_table3_figure(
    snakemake.input.table,
    figure_path=snakemake.output.figure,
    figure_csv=snakemake.output.data,
)
