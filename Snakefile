# kicl: in-context learning as kernel regression (Han et al., arXiv 2305.12766), reproduced and extended.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/theory.smk"
include: "rules/theory_icl.smk"
include: "rules/data.smk"
include: "rules/models.smk"
include: "rules/prompts.smk"
include: "rules/forward.smk"
include: "rules/figures.smk"
include: "rules/conditions.smk"
# after the rules whose outputs its summary page lists (rules.<name>.output)
include: "rules/tables.smk"
include: "rules/causal.smk"


rule all:
    default_target: True
    input:
        final_outputs(),


# Under a cluster executor (profiles/slurm) these run on the submitting machine instead of as Slurm jobs:
# trivial aggregation and small tables, which cost less than a job's start-up (10-30 s), and task
# preparation, which may download from the Hugging Face Hub (compute nodes often have no internet).
# Other stages mark their own download rules with `localrule: True`.
localrules:
    all,
    prepare_task,
    theory_table3_tables,
    conditions_tables,
    table_encoder_kr,
    report_summary,
