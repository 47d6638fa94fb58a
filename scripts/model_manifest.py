"""Snakemake adapter: resolve a model to a local folder (Hub snapshot, local or converted) and write its manifest."""

from kicl.workflow.logs import log_to

log_to(snakemake.log[0])
from kicl.data.models import write_model_manifest

write_model_manifest(
    snakemake.wildcards.model,
    snakemake.params.spec,
    snakemake.output[0],
)
