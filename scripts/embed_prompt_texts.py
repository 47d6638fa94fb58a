"""Snakemake adapter: embed every unique test and demonstration text of a prompt file with a sentence encoder."""

import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821 (snakemake is injected)
import logging

logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
from kicl.analysis.encoder_embed import embed_prompt_file

embed_prompt_file(
    snakemake.input.prompts,  # noqa: F821
    snakemake.input.encoder,  # noqa: F821
    snakemake.output[0],  # noqa: F821
    batch_size=snakemake.params.batch_size,  # noqa: F821
)
