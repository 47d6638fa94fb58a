"""Snakemake adapter: the Table 3 summary as Markdown and HTML, the paper's numbers beside ours."""

from kicl.workflow.logs import log_to

log_to(snakemake.log[0])
from kicl.tables.table3 import write_table3_tables

write_table3_tables(
    snakemake.input.table,
    markdown_path=snakemake.output.markdown,
    html_path=snakemake.output.html,
)
