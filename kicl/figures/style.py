"""Shared figure style for every kicl figure: headless backend, one look, safe saving."""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # headless: figures are files, never windows

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FixedLocator, NullLocator  # noqa: E402

from kicl.fileio import atomic_path  # noqa: E402

STYLE = {
    "figure.dpi": 100,
    "savefig.dpi": 150,
    "savefig.bbox": "tight",
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "lines.linewidth": 1.5,
    "lines.markersize": 4,
    "errorbar.capsize": 2,
}

#: main result in a strong colour, the paper's published values in black, comparisons in lighter colours
MAIN_COLOR = "#1f4e9c"
REFERENCE_COLOR = "black"
BASELINE_COLORS = ("#e08a3c", "#5aa469", "#b56ab8", "#8c8c8c", "#c44e52", "#56b4e9")
BASELINE_ALPHA = 0.55


def figure_style():
    """Context manager applying the kicl style; draw (and save) a figure inside it."""
    return plt.rc_context(STYLE)


def subplots(ncols: int = 1, nrows: int = 1, panel_size: tuple[float, float] = (4.0, 3.2)):
    """A figure of ``nrows × ncols`` panels of ``panel_size`` inches; axes is always a 2-D array."""
    return plt.subplots(nrows, ncols, figsize=(panel_size[0] * ncols, panel_size[1] * nrows), squeeze=False)


def log2_axis(axis, ticks: Sequence[int]) -> None:
    """Logarithmic x axis (base 2) labelled at the given integer ``ticks``."""
    axis.set_xscale("log", base=2)
    axis.xaxis.set_major_locator(FixedLocator(list(ticks)))
    axis.xaxis.set_minor_locator(NullLocator())
    axis.set_xticklabels([str(tick) for tick in ticks])


def save_figure(figure, path: str | os.PathLike) -> None:
    """Save ``figure`` atomically (the format follows the file suffix) and close it."""
    with figure_style(), atomic_path(path) as temporary:
        figure.savefig(temporary)
    plt.close(figure)
