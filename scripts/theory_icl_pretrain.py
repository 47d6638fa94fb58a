"""Snakemake adapter: pre-train the small transformer on the label world and save it as an HF folder."""

from kicl.workflow.logs import log_to

log_to(snakemake.log[0])
from kicl.theory.icl_options import TheoryICLOptions
from kicl.theory.pretrain import pretrain

options = TheoryICLOptions.of(snakemake.params.cfg)
pretrain(options, snakemake.output.model, snakemake.output.loss, threads=snakemake.threads)
