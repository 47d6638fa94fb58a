# Config loading and validation, wildcard constraints and target helpers. No rules here.
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from kicl.schema_errors import config_errors

# One line per problem, naming the key, before any job runs
# ("config key theory.n_hmms: -1 is less than the minimum of 1");
# snakemake's validate then fills in the schema defaults.
_config_problems = config_errors(
    config, workflow.source_path("../schemas/config.schema.yaml")
)
if _config_problems:
    raise WorkflowError("invalid configuration:\n  " + "\n  ".join(_config_problems))
validate(config, schema="../schemas/config.schema.yaml")


def theory_outputs():
    return [
        "results/theory/table3.csv",
        "results/theory/table3.md",
        "results/theory/table3.html",
        "results/theory/table3.png",
        "results/theory/table3_figure.csv",
    ]


def final_outputs():
    return theory_outputs()
