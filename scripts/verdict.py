"""Snakemake adapter: the verdict table (selected head vs the attention-free baselines) from Table 2's CSV."""

from kicl.workflow.logs import log_to

log_to(snakemake.log[0])
from kicl.tables.verdict import write_verdict

write_verdict([snakemake.input.table2], snakemake.output.csv, snakemake.output.md, level=snakemake.params.level)
