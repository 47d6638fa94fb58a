"""Fig 5 drawing: probe accuracy per head and offset with its SE, the majority, shuffled-null and identity lines.

Two null lines: the per-probe 95% quantile (pooled over probes) and the family-wise one (the 95% quantile over
shuffles of the maximum over all probes); only a probe above the second beats the null family-wise.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from kicl.analysis.probes import TARGETS, ProbeOptions, probe_accuracy, probe_frame
from kicl.figures.style import BASELINE_COLORS, MAIN_COLOR, figure_style, plt, save_figure
from kicl.fileio import atomic_path
from kicl.store.reader import open_store


def plot_probe(result, path, title: str) -> None:
    """A panel per offset: heads (accuracy ± SE vs layer), the per-layer mean, the reference lines."""
    offsets = result["offset"].values
    layers = result["layer"].values
    info = result.attrs
    with figure_style():
        fig, axes = plt.subplots(
            1, len(offsets), figsize=(3.0 * len(offsets), 3.6), sharey=True, squeeze=False, layout="constrained"
        )
        n_heads = result.sizes["kv_head"]
        jitter = np.linspace(-0.25, 0.25, n_heads) if n_heads > 1 else np.zeros(1)
        for ax, off in zip(axes[0], offsets):
            acc = result["accuracy"].sel(offset=off).values  # (layer, head)
            se = result["se"].sel(offset=off).values
            xs = (layers[:, None] + jitter[None, :]).ravel()
            ax.errorbar(
                xs,
                acc.ravel(),
                yerr=se.ravel(),
                fmt="o",
                ms=2.5,
                elinewidth=0.6,
                alpha=0.5,
                color=BASELINE_COLORS[0],
                label="head ± SE",
            )
            ax.plot(layers, np.nanmean(acc, 1), color=MAIN_COLOR, label="layer mean")
            ax.axhline(info["majority"], color="gray", linestyle="--", linewidth=1, label="majority class")
            null = result["null_accuracy"].sel(offset=off).values
            if np.isfinite(null).any():
                ax.plot(
                    layers, np.nanmean(null, 1), color=BASELINE_COLORS[3], linestyle=":", label="shuffled-target null"
                )
                ax.axhline(
                    info["null_q95"],
                    color=BASELINE_COLORS[3],
                    linestyle="-.",
                    linewidth=0.8,
                    label="null 95% (per probe)",
                )
                ax.axhline(
                    info["null_fw_q95"],
                    color=BASELINE_COLORS[3],
                    linestyle="-",
                    linewidth=0.8,
                    label=f"null 95% (family-wise, max over probes; {info['n_null']} shuffles)",
                )
            if off == 0:
                ax.axhline(
                    info["identity_offset0"],
                    color=BASELINE_COLORS[4],
                    linestyle="--",
                    linewidth=1,
                    label="label-token identity",
                )
            ax.set_title(f"offset {off:+d}")
            ax.set_xlabel("layer")
            ax.set_ylim(-0.02, 1.02)
        axes[0][0].set_ylabel("probe accuracy (held-out texts)")
        handles = {}
        for ax in axes[0]:
            for handle, label in zip(*ax.get_legend_handles_labels()):
                handles.setdefault(label, handle)
        fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=len(handles))
        fig.suptitle(title)
    save_figure(fig, path)


def probe_figure(store, png_keys, png_values, csv, options: ProbeOptions | None = None, *, title=""):
    """Fig 5a (keys -> top token of x_i alone) and Fig 5b (values -> y_i), plus the CSV of every number."""
    o = options or ProbeOptions()
    keys, alpha = o.keys, o.alpha
    ds = open_store(store, needs=[keys, "values", "demo_top_token", "demo_label"])
    frames = []
    for variable, png, label in [
        (keys, png_keys, "(a) keys → argmax_o P(o|x_i)"),
        ("values", png_values, "(b) values → y_i"),
    ]:
        result = probe_accuracy(ds, variable, alpha, o.test_fraction, o.seed, n_null=o.n_null)
        info = result.attrs
        plot_probe(
            result,
            png,
            f"{title}\n{label}: ridge λ={alpha}, {info['n_train']} train / {info['n_test']} test demonstrations "
            f"({info['n_train_texts']} / {info['n_test_texts']} distinct texts, split by {info['split_unit']}), "
            f"{info['n_classes']} classes",
        )
        frames.append(probe_frame(result))
    with atomic_path(csv) as temporary:
        pd.concat(frames).to_csv(temporary, index=False, float_format="%.6g")
    return frames


__all__ = ["TARGETS", "plot_probe", "probe_figure"]
