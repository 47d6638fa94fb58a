"""Snakemake adapter: the conditions stage's numbers of one (model, task), every condition side by side, as CSVs
(kicl.analysis.conditions.compare_conditions, kicl.analysis.conditions_stage)."""

from kicl.workflow.logs import log_to

log_to(snakemake.log[0])
from kicl.analysis.conditions import StageOptions, compare_conditions, condition_inputs
from kicl.analysis.conditions_stage import write_condition_numbers

named, conditions = dict(snakemake.input.items()), snakemake.params.conditions
inputs = condition_inputs(
    stores={c: named[f"store_{c}"] for c in conditions},
    prompts={c: named[f"prompts_{c}"] for c in conditions},
    protocols=snakemake.params.protocols,
    kr_csvs={c: named[f"kr_{c}"] for c in conditions if f"kr_{c}" in named},
    embeddings={c: named[f"emb_{c}"] for c in conditions if f"emb_{c}" in named},
)
options = StageOptions(
    bootstrap=snakemake.params.bootstrap,
    pooling=snakemake.params.pooling,
    ties=snakemake.params.vote_ties,
    aliases=snakemake.params.aliases,
)
results = compare_conditions(inputs, snakemake.params.reference, snakemake.wildcards.task, options)
write_condition_numbers(
    results, dict(snakemake.output.items()), model=snakemake.wildcards.model, head_maps=snakemake.params.head_maps
)
