"""Snakemake adapter: Fig 5a/5b, ridge probes on keys (-> top token of x_i) and values (-> y_i) at label offsets."""

from kicl.workflow.logs import log_to

log_to(snakemake.log[0])
from kicl.analysis.probes import ProbeOptions
from kicl.figures.fig5_kv_probes import probe_figure

probe_figure(
    snakemake.input.store,
    snakemake.output.png_keys,
    snakemake.output.png_values,
    snakemake.output.csv,
    ProbeOptions(
        alpha=snakemake.params.alpha,
        test_fraction=snakemake.params.test_fraction,
        seed=snakemake.params.seed,
        n_null=snakemake.params.n_null,
        keys=snakemake.params.key_variable,
    ),
    title=f"Fig 5: {snakemake.wildcards.model} / {snakemake.wildcards.task}",
)
