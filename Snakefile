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
include: "rules/tables.smk"
include: "rules/causal.smk"
include: "rules/conditions.smk"
include: "rules/report.smk"


# Under a cluster executor (profiles/slurm), rules marked `localrule: True` run on the submitting machine:
# downloads (compute nodes often have no internet) and small tables, which cost less than a job's start-up.
rule all:
    default_target: True
    input:
        final_outputs(),
    localrule: True
