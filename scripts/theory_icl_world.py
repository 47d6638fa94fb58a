"""Snakemake adapter: write the chain's ICL task of the label world (test and demo-pool splits)."""

from kicl.workflow.logs import log_to

log_to(snakemake.log[0])
from pathlib import Path

from kicl.theory.icl_options import TheoryICLOptions
from kicl.theory.icl_world import write_world_task

write_world_task(TheoryICLOptions.of(snakemake.params.cfg), Path(snakemake.output.test).parent)
