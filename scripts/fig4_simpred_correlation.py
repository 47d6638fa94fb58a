"""Snakemake adapter: Fig 4, per-head Pearson correlation of kernel weights with sim_pred (Eq. 9)."""

import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821 (snakemake is injected)
import logging

logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
from kicl.analysis.correlation import correlation_figure

correlation_figure(
    snakemake.input.store,  # noqa: F821
    snakemake.output.png,  # noqa: F821
    snakemake.output.csv,  # noqa: F821
    pools=snakemake.params.poolings,  # noqa: F821
    splits=snakemake.params.splits,  # noqa: F821
    mode=snakemake.params.pooling,  # noqa: F821
    batch_size=snakemake.params.batch_size,  # noqa: F821
    title=f"Fig 4: {snakemake.wildcards.model} / {snakemake.wildcards.task}",  # noqa: F821
)
