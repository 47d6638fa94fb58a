"""Snakemake adapter: embed every unique test and demonstration text of a prompt file with a sentence encoder."""

from kicl.workflow.logs import log_to

log_to(snakemake.log[0])
from kicl.analysis.encoder_embed import embed_prompt_file

embed_prompt_file(
    snakemake.input.prompts,
    snakemake.input.encoder,
    snakemake.output[0],
    batch_size=snakemake.params.batch_size,
    cache=snakemake.params.cache,
)
