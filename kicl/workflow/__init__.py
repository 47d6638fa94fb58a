"""Snakemake-facing helpers: cluster resources, the summary page, adapter logging."""
