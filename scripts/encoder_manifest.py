"""Snakemake adapter: resolve a sentence encoder to a local folder and write its manifest."""

import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821 (snakemake is injected)
import logging

logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
from kicl.data.encoders import write_encoder_manifest

write_encoder_manifest(
    snakemake.wildcards.encoder,  # noqa: F821
    snakemake.params.spec,  # noqa: F821
    snakemake.output[0],  # noqa: F821
)
