"""Snakemake adapter: the decision rule's verdict per task (kicl.tables.verdict) from the forward stores."""

from kicl.workflow.logs import log_to

log_to(snakemake.log[0])
from kicl.analysis.decision import DecisionRule
from kicl.tables.verdict import VerdictInputs, write_verdict

tasks = snakemake.params.tasks
named = dict(snakemake.input.items())  # store_<task>, and partner_<task> for the reference condition
write_verdict(
    snakemake.wildcards.model,
    snakemake.wildcards.condition,
    VerdictInputs(
        stores={task: named[f"store_{task}"] for task in tasks},
        partners={task: named[f"partner_{task}"] for task in tasks if f"partner_{task}" in named},
        dtype_check=named.get("dtype_check"),
    ),
    rule=DecisionRule.from_config(snakemake.params.decision),
    pooling=snakemake.params.pooling,
    ties=snakemake.params.vote_ties,
    out={"csv": snakemake.output.csv, "md": snakemake.output.md, "heads": snakemake.output.heads},
)
