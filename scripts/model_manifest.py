"""Snakemake adapter: resolve a model to a local folder (Hub snapshot, local or converted) and write its manifest."""

import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821 (snakemake is injected)
import logging

logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
from kicl.data.models import write_model_manifest

write_model_manifest(
    snakemake.wildcards.model,  # noqa: F821
    snakemake.params.spec,  # noqa: F821
    snakemake.output[0],  # noqa: F821
)
