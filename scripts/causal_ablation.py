"""Snakemake adapter: ablate heads of one (model, task) on its held-out prompts (kicl.capture.causal)."""

from kicl.workflow.logs import log_to

log_to(snakemake.log[0])
from kicl.capture.causal import CausalFiles, run_causal_ablation

files = CausalFiles(
    meta=snakemake.input.meta,
    prompts=snakemake.input.prompts,
    model=snakemake.input.model,
    store=snakemake.input.store,
    ranking=snakemake.input.ranking,
    prompts_csv=snakemake.output.prompts,
    heads_csv=snakemake.output.heads,
)
run_causal_ablation(files, causal=snakemake.params.causal, capture=snakemake.params.capture, threads=snakemake.threads)
