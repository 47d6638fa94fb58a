"""Snakemake adapter: the Table 3 figure (distance and accuracy vs n) and the CSV behind it."""

import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821 (snakemake is injected)
import logging

logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
from kicl.theory.table3 import write_table3_figure

write_table3_figure(
    snakemake.input.table,  # noqa: F821
    figure_path=snakemake.output.figure,  # noqa: F821
    figure_csv=snakemake.output.data,  # noqa: F821
)
