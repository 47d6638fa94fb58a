"""Snakemake adapter: build the ICL prompts of one (model, task, condition) with their segment maps."""

from kicl.workflow.logs import log_to

log_to(snakemake.log[0])
from functools import partial

from kicl.prompts.build import PromptPaths, build_prompt_files
from kicl.prompts.options import Protocol

providers = {}
if snakemake.params.capture is not None:  # the model_kernel strategy: the model's own P(o|x) kernel (Eq. 9)
    import json

    from kicl.capture.simpred_cache import model_kernel_similarity

    capture = dict(snakemake.params.capture)
    if hasattr(snakemake.input, "dtype"):  # capture.dtype auto: the dtype settled by the model's dtype check
        with open(snakemake.input.dtype) as handle:
            capture["dtype"] = json.load(handle)["chosen"]
    providers["model_kernel"] = partial(
        model_kernel_similarity,
        snakemake.input.model,
        capture,
        snakemake.params.simpred_cache,
        snakemake.params.spec["template"],
        threads=snakemake.threads,
    )
paths = PromptPaths(
    model_manifest=snakemake.input.model,
    eval=snakemake.input.eval,
    demo=snakemake.input.demo,
    meta=snakemake.output.meta,
    prompts=snakemake.output.prompts,
    encoder_manifest=getattr(snakemake.input, "encoder", None),  # strategies and orders that rank by an encoder
    other_demo=getattr(snakemake.input, "other_demo", None),  # inputs: other_task
)
build_prompt_files(
    task=snakemake.wildcards.task,
    task_spec=snakemake.params.spec,
    model=snakemake.wildcards.model,
    paths=paths,
    protocol=Protocol.of(snakemake.params.protocol),
    similarity_providers=providers,
    other_task_spec=snakemake.params.other_spec,
    encoder_cache=snakemake.params.encoder_cache,
)
