"""Drawing (rules/figures.smk): each module turns analysis results into a figure and its CSV."""
