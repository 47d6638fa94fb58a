"""Fig 4 drawing: heat-maps of r(kernel weight, sim_pred) and of the partial r, heads beyond the null marked.

Dots: heads whose family-wise p (studentised max-T over the heads of one pooling, each head centred on its
own within-prompt permutation null; kicl.analysis.correlation) is at most 1 − level.
"""

from __future__ import annotations

import numpy as np

from kicl.analysis.correlation import CorrelationOptions, correlation_frame, simpred_correlation
from kicl.figures.heatmaps import ColorScale, head_heatmaps
from kicl.fileio import atomic_path
from kicl.store.reader import open_store, poolings, split_mask

UNIT_TEXT = {
    "centred": "centred within each prompt, over all (test, demo) pairs",
    "pairs": "over all (test, demo) pairs",
    "per_prompt": "within each prompt, averaged over prompts",
}


def correlation_figure(
    store,
    png,
    csv,
    *,
    pools=(),
    splits=("select", "heldout"),
    options: CorrelationOptions | None = None,
    batch_size=256,
    title="",
):
    """Fig 4 and its CSV: per pooling, r and the partial r per head; dots = beyond the family-wise max-T null."""
    ds = open_store(
        store, needs=["kernel_weight", "sim_pred", "split", "input_start", "input_end", "demo_label", "prediction"]
    )
    pools = poolings(ds, pools)
    prompts = np.flatnonzero(split_mask(ds, splits))
    options = options or CorrelationOptions()
    result = simpred_correlation(ds, prompts, pools, options, batch_size=batch_size)
    level = options.level
    frame = correlation_frame(result)
    with atomic_path(csv) as temporary:
        frame.to_csv(temporary, index=False, float_format="%.6g")
    grids, marks, notes = {}, {}, {}
    for pool in pools:
        for key, label in (("r", "r"), ("partial_r", "partial r")):
            name = f"{pool}: {label}"
            grid = result[key].sel(pooling=pool).values
            threshold = float(result[f"{key}_max_t"].sel(pooling=pool))
            grids[name] = grid
            marks[name] = result[f"{key}_p_max"].sel(pooling=pool).values <= 1 - level + 1e-12
            flat = np.nanargmax(grid) if np.isfinite(grid).any() else 0
            lay, head = np.unravel_index(flat, grid.shape)
            low = result[f"{key}_low"].sel(pooling=pool).values[lay, head]
            high = result[f"{key}_high"].sel(pooling=pool).values[lay, head]
            notes[name] = f"CI [{low:.3f}, {high:.3f}]; null max|T| {level:.0%}: {threshold:.2f} sd"
    stored = result.attrs.get("hubness_source") == "stored"
    hubness = "exact, from the capture" if stored else f"{result.attrs['hubness_coverage']:.0%} of pairs estimated"
    finite = np.concatenate([g[np.isfinite(g)] for g in grids.values()] + [np.zeros(1)])
    bound = float(np.abs(finite).max()) or 1.0
    head_heatmaps(
        grids,
        png,
        f"{title}\nPearson r(kernel weight, sim_pred) {UNIT_TEXT[options.unit]}; partial r controls slot, |x_i|, y_i, "
        f"1[y_i = ŷ] and demo hubness ({hubness});\n"
        f"{result.attrs['n_prompts']} prompts ({'+'.join(splits)}), {result.attrs['n_pairs']} pairs; dots: family-wise "
        f"p ≤ {1 - level:.2g} (max |T| over heads, each centred on its null; {options.n_permutations} within-prompt "
        "permutations)",
        "Pearson r",
        scale=ColorScale(-bound, bound, "RdBu_r"),
        marks=marks,
        notes=notes,
    )
    return result
