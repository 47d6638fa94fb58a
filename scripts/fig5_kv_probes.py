"""Snakemake adapter: Fig 5a/5b, ridge probes on keys (-> top token of x_i) and values (-> y_i) at label offsets."""

import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821 (snakemake is injected)
import logging

logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
from kicl.analysis.probes import probe_figure

probe_figure(
    snakemake.input.store,  # noqa: F821
    snakemake.output.png_keys,  # noqa: F821
    snakemake.output.png_values,  # noqa: F821
    snakemake.output.csv,  # noqa: F821
    alpha=snakemake.params.alpha,  # noqa: F821
    test_fraction=snakemake.params.test_fraction,  # noqa: F821
    seed=snakemake.params.seed,  # noqa: F821
    keys=snakemake.params.key_variable,  # noqa: F821
    title=f"Fig 5: {snakemake.wildcards.model} / {snakemake.wildcards.task}",  # noqa: F821
)
