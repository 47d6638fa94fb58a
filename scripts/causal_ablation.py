"""Snakemake adapter: ablate heads of one (model, task) on its held-out prompts (kicl.capture.ablation)."""

from kicl.workflow.logs import log_to

log_to(snakemake.log[0])
from kicl.capture.ablation import run_ablation

run_ablation(
    meta_path=snakemake.input.meta,
    prompts_path=snakemake.input.prompts,
    manifest=snakemake.input.model,
    store_path=snakemake.input.store,
    out_csv=snakemake.output.prompts,
    heads_csv=snakemake.output.heads,
    causal=snakemake.params.causal,
    capture=snakemake.params.capture,
    threads=snakemake.threads,
)
