"""Snakemake adapter: the sentence-encoder kernel-regression rows alone (no forward pass needed)."""

import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821 (snakemake is injected)
import logging

logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
from kicl.tables.table2 import encoder_table

encoder_table(
    snakemake.wildcards.model,  # noqa: F821
    dict(zip(map(tuple, snakemake.params.kr_keys), snakemake.input.kr)),  # noqa: F821
    snakemake.output.csv,  # noqa: F821
    snakemake.output.md,  # noqa: F821
    snakemake.output.tex,  # noqa: F821
    tau=snakemake.params.tau,  # noqa: F821
    aliases=snakemake.params.aliases,  # noqa: F821
    **snakemake.params.bootstrap,  # noqa: F821
)
