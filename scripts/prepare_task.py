"""Snakemake adapter: load one split of a task from its source, check it and write it as parquet."""

import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821 (snakemake is injected)
import logging

logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
from kicl.data.tasks import prepare_split

prepare_split(
    snakemake.wildcards.task,  # noqa: F821
    snakemake.params.spec,  # noqa: F821
    snakemake.wildcards.split,  # noqa: F821
    snakemake.output[0],  # noqa: F821
    member_path=snakemake.params.member,  # noqa: F821
)
