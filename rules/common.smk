# Config loading and validation, wildcard constraints and target helpers. No rules here.
from snakemake.utils import validate

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
