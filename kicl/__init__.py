"""kicl: in-context learning as kernel regression (Han et al., arXiv 2305.12766), reproduced.

A plain library: one module per concept, no Snakemake import. The workflow's scripts call its functions.
"""
