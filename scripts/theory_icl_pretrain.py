"""Snakemake adapter: pre-train the small transformer on the label world and save it as an HF folder."""

from kicl.workflow.logs import log_to

log_to(snakemake.log[0])
from kicl.theory.pretrain import pretrain

pretrain(snakemake.params.cfg, snakemake.output.model, snakemake.output.loss, threads=snakemake.threads)
