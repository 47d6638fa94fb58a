"""Snakemake adapter: resolve a sentence encoder to a local folder and write its manifest."""

from kicl.workflow.logs import log_to

log_to(snakemake.log[0])
from kicl.data.encoders import write_encoder_manifest

write_encoder_manifest(
    snakemake.wildcards.encoder,
    snakemake.params.spec,
    snakemake.output[0],
)
