"""Snakemake adapter: fetch a packaged GGUF model (pinned wheels) and convert it to a plain HF folder."""

import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821 (snakemake is injected)
import logging

logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
import torch

torch.set_num_threads(snakemake.threads)  # noqa: F821
from kicl.data.models import convert_packaged_gguf

convert_packaged_gguf(
    snakemake.wildcards.model,  # noqa: F821
    snakemake.params.spec,  # noqa: F821
    snakemake.output[0],  # noqa: F821
)
