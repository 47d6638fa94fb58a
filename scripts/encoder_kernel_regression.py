"""Snakemake adapter: sentence-encoder kernel regression over each prompt's own demonstrations."""

import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821 (snakemake is injected)
import logging

logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
from kicl.analysis.encoder_kr import encoder_kr_file

encoder_kr_file(
    snakemake.input.prompts,  # noqa: F821
    snakemake.input.meta,  # noqa: F821
    snakemake.input.embeddings,  # noqa: F821
    snakemake.output[0],  # noqa: F821
    tau=snakemake.params.tau,  # noqa: F821
)
