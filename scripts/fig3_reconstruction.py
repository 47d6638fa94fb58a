"""Snakemake adapter: Fig 3a/3b, per-head reconstruction of the ICL prediction and of gold from kernel weights."""

import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821 (snakemake is injected)
import logging

logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
from kicl.analysis.reconstruction import reconstruction_figure

reconstruction_figure(
    snakemake.input.store,  # noqa: F821
    snakemake.output.png_pred,  # noqa: F821
    snakemake.output.png_gold,  # noqa: F821
    snakemake.output.csv,  # noqa: F821
    pools=snakemake.params.poolings,  # noqa: F821
    splits=snakemake.params.splits,  # noqa: F821
    batch_size=snakemake.params.batch_size,  # noqa: F821
    title=f"Fig 3: {snakemake.wildcards.model} / {snakemake.wildcards.task}",  # noqa: F821
)
