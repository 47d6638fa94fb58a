"""Snakemake adapter: Fig 25, one test point's attention map (no averaging)."""

from kicl.workflow.logs import log_to

log_to(snakemake.log[0])
from kicl.figures.fig2_attention_map import AttentionMapOptions, attention_map_figure

attention_map_figure(
    snakemake.input.store,
    snakemake.output.png,
    snakemake.output.csv,
    AttentionMapOptions(
        rescale_len=snakemake.params.rescale_len,
        mode=snakemake.params.rescale_mode,
        color_scale=snakemake.params.color_scale,
        vmax_quantile=snakemake.params.vmax_quantile,
    ),
    prompt=snakemake.params.prompt,
    title=f"Fig 25: {snakemake.wildcards.model} / {snakemake.wildcards.task}",
)
