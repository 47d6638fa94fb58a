"""Snakemake adapter: build the ICL prompts of one (model, task) with their segment maps."""

import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821 (snakemake is injected)
import logging

logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
from kicl.prompts.build import build_prompt_files

build_prompt_files(
    task=snakemake.wildcards.task,  # noqa: F821
    task_spec=snakemake.params.spec,  # noqa: F821
    model=snakemake.wildcards.model,  # noqa: F821
    model_manifest=snakemake.input.model,  # noqa: F821
    eval_path=snakemake.input.eval,  # noqa: F821
    demo_path=snakemake.input.demo,  # noqa: F821
    protocol=snakemake.params.protocol,  # noqa: F821
    meta_path=snakemake.output.meta,  # noqa: F821
    prompts_path=snakemake.output.prompts,  # noqa: F821
    encoder_manifest=getattr(snakemake.input, "encoder", None),  # noqa: F821 (retrieval strategies only)
)
