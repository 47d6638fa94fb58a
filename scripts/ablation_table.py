"""Snakemake adapter: the ablation stage of one (model, task): every condition side by side (tables, figures)."""

from kicl.workflow.logs import log_to

log_to(snakemake.log[0])
from pathlib import Path

from kicl.figures.conditions import write_condition_outputs

conditions = snakemake.params.conditions
written = write_condition_outputs(
    stores={c: getattr(snakemake.input, f"store_{c}") for c in conditions},
    prompts={c: getattr(snakemake.input, f"prompts_{c}") for c in conditions},
    protocols=snakemake.params.protocols,
    reference=snakemake.params.reference,
    task=snakemake.wildcards.task,
    out_dir=Path(snakemake.output.csv).parent,
    kr_csvs={c: getattr(snakemake.input, f"kr_{c}") for c in conditions if hasattr(snakemake.input, f"kr_{c}")},
    embeddings={c: getattr(snakemake.input, f"emb_{c}") for c in conditions if hasattr(snakemake.input, f"emb_{c}")},
    bootstrap=snakemake.params.bootstrap,
    model=snakemake.wildcards.model,
    pooling=snakemake.params.pooling,
    ties=snakemake.params.vote_ties,
    heatmap_conditions=snakemake.params.head_maps or None,
    aliases=snakemake.params.aliases,
)
declared = {key: Path(path) for key, path in snakemake.output.items()}
if {key: Path(path) for key, path in written.items()} != declared:
    raise RuntimeError(f"the ablation stage wrote {sorted(written)}, the rule declares {sorted(declared)}")
