"""Snakemake adapter: the Table 3 summary as Markdown and HTML, the paper's numbers beside ours."""

import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821 (snakemake is injected)
import logging

logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
from kicl.theory.table3 import write_table3_tables

write_table3_tables(
    snakemake.input.table,  # noqa: F821
    markdown_path=snakemake.output.markdown,  # noqa: F821
    html_path=snakemake.output.html,  # noqa: F821
)
