# kicl: in-context learning as kernel regression (Han et al., arXiv 2305.12766), reproduced and extended.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/theory.smk"
include: "rules/data.smk"
include: "rules/models.smk"
include: "rules/prompts.smk"


rule all:
    default_target: True
    input:
        final_outputs(),


# Under a cluster executor (profiles/slurm) these run on the submitting machine instead of as Slurm jobs:
# trivial aggregation that costs less than a job's start-up (10-30 s), and rendering of small tables.
localrules:
    all,
    theory_table3_tables,
