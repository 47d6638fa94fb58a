"""Snakemake adapter: settle capture.dtype auto for one model (bfloat16 where the agreement check allows it)."""

from kicl.workflow.logs import log_to

log_to(snakemake.log[0])
from kicl.capture.dtype_check import write_dtype_decision

write_dtype_decision(
    snakemake.input.model,
    snakemake.params.capture,
    dict(zip(snakemake.params.tasks, zip(snakemake.input.metas, snakemake.input.prompts))),
    snakemake.output[0],
    threads=snakemake.threads,
)
