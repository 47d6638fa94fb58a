"""Snakemake adapter: sentence-encoder kernel regression over each prompt's own demonstrations."""

from kicl.workflow.logs import log_to

log_to(snakemake.log[0])
from kicl.analysis.encoder_kr import encoder_kr_file

encoder_kr_file(
    snakemake.input.prompts,
    snakemake.input.meta,
    snakemake.input.embeddings,
    snakemake.output[0],
    tau=snakemake.params.tau,
)
