"""Snakemake adapter: Fig 2, the last token's attention averaged over test points on an aligned layout."""

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
        splits=snakemake.params.splits,
        color_scale=snakemake.params.color_scale,
        vmax_quantile=snakemake.params.vmax_quantile,
        batch_size=snakemake.params.batch_size,
    ),
    title=f"Fig 2: {snakemake.wildcards.model} / {snakemake.wildcards.task}",
)
