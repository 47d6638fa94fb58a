"""Snakemake adapter: the conditions stage's numbers of one (model, task), every condition side by side, as CSVs
(kicl.analysis.conditions.compare_conditions, kicl.analysis.conditions_stage)."""

from kicl.workflow.logs import log_to

log_to(snakemake.log[0])
from kicl.analysis.conditions import compare_conditions
from kicl.analysis.conditions_stage import write_condition_numbers

conditions = snakemake.params.conditions
results = compare_conditions(
    stores={c: getattr(snakemake.input, f"store_{c}") for c in conditions},
    prompts={c: getattr(snakemake.input, f"prompts_{c}") for c in conditions},
    protocols=snakemake.params.protocols,
    reference=snakemake.params.reference,
    task=snakemake.wildcards.task,
    kr_csvs={c: getattr(snakemake.input, f"kr_{c}") for c in conditions if hasattr(snakemake.input, f"kr_{c}")},
    embeddings={c: getattr(snakemake.input, f"emb_{c}") for c in conditions if hasattr(snakemake.input, f"emb_{c}")},
    bootstrap=snakemake.params.bootstrap,
    pooling=snakemake.params.pooling,
    ties=snakemake.params.vote_ties,
    aliases=snakemake.params.aliases,
)
write_condition_numbers(
    results, dict(snakemake.output.items()), model=snakemake.wildcards.model, head_maps=snakemake.params.head_maps
)
