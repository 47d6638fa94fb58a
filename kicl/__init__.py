"""kicl: in-context learning as kernel regression (Han et al., arXiv 2305.12766), reproduced.

A plain library: one subpackage per workflow stage, no Snakemake import. The workflow's scripts call its functions.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kicl")
except PackageNotFoundError:  # imported from a source tree that was never installed (e.g. a bare conda env)
    __version__ = "0+unknown"
