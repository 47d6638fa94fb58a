"""Table 3's numbers for the table and the figure: method names, the figure's panels and its long-format data.

The experiment itself is kicl.theory.experiment; the tables are written by kicl.tables.table3 and the figure is
drawn by kicl.figures.table3.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from kicl.tables.paper import PAPER_TABLE3

METHOD_LABELS = {
    "kernel_regression": "kernel regression (Eq. 6, clip)",
    "nadaraya_watson": "Nadaraya-Watson, same kernel",
    "nw_linear": "Nadaraya-Watson, linear kernel (A = I)",
    "label_frequency": "label frequency",
    "oracle": "oracle (task θ* known)",
}
MAIN_METHOD = "kernel_regression"

#: the figure's panels: (panel name, metric column, y label)
PANELS = (
    ("distance", "l1", "L1 distance to P(y | o_ICL)"),
    ("accuracy", "acc_posterior", "accuracy (argmax = posterior argmax)"),
)


def figure_data(summary: pd.DataFrame) -> pd.DataFrame:
    """The numbers behind the figure, long format: panel, series, n, value, sd (NaN for the paper)."""
    frames = []
    for panel, metric, _ in PANELS:
        frames.append(
            pd.DataFrame(
                {
                    "panel": panel,
                    "series": summary["method"],
                    "n": summary["n"],
                    "value": summary[f"{metric}_mean"],
                    "sd": summary[f"{metric}_sd"],
                }
            )
        )
        frames.append(
            pd.DataFrame(
                {"panel": panel, "series": "paper", "n": PAPER_TABLE3["n"], "value": PAPER_TABLE3[panel], "sd": np.nan}
            )
        )
    return pd.concat(frames, ignore_index=True)
