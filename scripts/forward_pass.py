"""Snakemake adapter: capture the forward passes of one (model, task) prompt set into its Zarr store."""

import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821 (snakemake is injected)
import logging

logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
from kicl.capture.run import run_capture

run_capture(
    meta_path=snakemake.input.meta,  # noqa: F821
    prompts_path=snakemake.input.prompts,  # noqa: F821
    manifest=snakemake.input.model,  # noqa: F821
    store_path=snakemake.output[0],  # noqa: F821
    capture=snakemake.params.capture,  # noqa: F821
    config_attrs=snakemake.params.record,  # noqa: F821
    threads=snakemake.threads,  # noqa: F821
)
