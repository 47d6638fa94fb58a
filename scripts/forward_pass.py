"""Snakemake adapter: capture the forward passes of one (model, task) prompt set into its Zarr store."""

from kicl.workflow.logs import log_to

log_to(snakemake.log[0])
from kicl.capture.run import CaptureJob, run_capture

run_capture(
    meta_path=snakemake.input.meta,
    prompts_path=snakemake.input.prompts,
    manifest=snakemake.input.model,
    store_path=snakemake.output[0],
    capture=snakemake.params.capture,
    job=CaptureJob(
        simpred_cache=snakemake.params.simpred_cache,
        dtype_decision=snakemake.params.dtype_decision,
        threads=snakemake.threads,
    ),
    config_attrs=snakemake.params.record,
)
