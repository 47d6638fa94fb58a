"""Snakemake adapter: load one split of a task from its source, check it and write it as parquet."""

from kicl.workflow.logs import log_to

log_to(snakemake.log[0])
from kicl.data.tasks import prepare_split

prepare_split(
    snakemake.wildcards.task,
    snakemake.params.spec,
    snakemake.wildcards.split,
    snakemake.output[0],
    member_path=snakemake.params.member,
)
