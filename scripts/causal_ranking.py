"""Snakemake adapter: the causal stage's head ranking of one (model, task) from its forward store
(kicl.analysis.causal)."""

from kicl.workflow.logs import log_to

log_to(snakemake.log[0])
from kicl.analysis.causal import write_head_ranking

write_head_ranking(
    snakemake.input.store,
    snakemake.output.ranking,
    pooling=snakemake.params.pooling,
    rank_by=snakemake.params.rank_by,
)
