"""Snakemake adapter: Fig 2, the last token's attention averaged over test points on an aligned layout."""

import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821 (snakemake is injected)
import logging

logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
from kicl.analysis.attention_map import attention_map_figure

attention_map_figure(
    snakemake.input.store,  # noqa: F821
    snakemake.output.png,  # noqa: F821
    snakemake.output.csv,  # noqa: F821
    rescale_len=snakemake.params.rescale_len,  # noqa: F821
    mode=snakemake.params.rescale_mode,  # noqa: F821
    splits=snakemake.params.splits,  # noqa: F821
    color_scale=snakemake.params.color_scale,  # noqa: F821
    vmax_quantile=snakemake.params.vmax_quantile,  # noqa: F821
    batch_size=snakemake.params.batch_size,  # noqa: F821
    title=f"Fig 2: {snakemake.wildcards.model} / {snakemake.wildcards.task}",  # noqa: F821
)
