# kicl: in-context learning as kernel regression (Han et al., arXiv 2305.12766), reproduced and extended.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/theory.smk"


rule all:
    default_target: True
    input:
        final_outputs(),
