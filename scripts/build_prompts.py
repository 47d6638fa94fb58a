"""Snakemake adapter: build the ICL prompts of one (model, task) with their segment maps."""

from kicl.workflow.logs import log_to

log_to(snakemake.log[0])
from kicl.prompts.build import build_prompt_files

build_prompt_files(
    task=snakemake.wildcards.task,
    task_spec=snakemake.params.spec,
    model=snakemake.wildcards.model,
    model_manifest=snakemake.input.model,
    eval_path=snakemake.input.eval,
    demo_path=snakemake.input.demo,
    protocol=snakemake.params.protocol,
    meta_path=snakemake.output.meta,
    prompts_path=snakemake.output.prompts,
    encoder_manifest=getattr(snakemake.input, "encoder", None),  # retrieval strategies only
)
