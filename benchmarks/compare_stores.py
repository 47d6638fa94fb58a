"""Compare the forward stores of two runs, prompt by prompt, matched by test point (``test_index``).

Used to check that a refactor leaves the stores unchanged, even when the second run has more test points
(held-out points are drawn first, and prompt i's demonstrations depend only on (seed, test_index)):

    python benchmarks/compare_stores.py OLD/results/forward/smollm2-135m NEW/results/forward/smollm2-135m \
        --tasks movie_snippets trec tweet_sentiment [--condition paper]

A store is ``<root>/<task>/<condition>.zarr``, or ``<root>/<task>.zarr`` (the layout before conditions).

Prints, per task, whether the integer and text variables are equal and the largest difference of the float ones.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import xarray as xr

EXACT = ["prompt_text", "demo_label", "demo_pool_index", "gold", "label_pos", "input_start", "prediction"]
EXACT += ["demo_top_token", "test_top_token"]
CLOSE = ["label_logits", "kernel_weight", "sim_pred"]


def compare(old_path: str, new_path: str) -> dict:
    old, new = xr.open_zarr(old_path, chunks=None), xr.open_zarr(new_path, chunks=None)
    where_new = {int(t): i for i, t in enumerate(new.test_index.values)}
    pairs = [(i, where_new[int(t)]) for i, t in enumerate(old.test_index.values) if int(t) in where_new]
    io, inew = (np.array(side) for side in zip(*pairs))
    result = {"prompts old": old.sizes["prompt"], "prompts new": new.sizes["prompt"], "matched": len(pairs)}
    for name in EXACT:
        result[f"{name} equal"] = bool((old[name].values[io] == new[name].values[inew]).all())
    for name in CLOSE:
        result[f"{name} max|diff|"] = float(np.nanmax(np.abs(old[name].values[io] - new[name].values[inew])))
    width = min(old.sizes["position"], new.sizes["position"])
    attention = old.attention.values[io][..., :width] - new.attention.values[inew][..., :width]
    result["attention max|diff|"] = float(np.nanmax(np.abs(attention)))
    return result


def store_path(root: str, task: str, condition: str) -> str:
    """The task's store under a forward root, in the condition layout or the older one without conditions."""
    path = Path(root, task, f"{condition}.zarr")
    return str(path if path.exists() else Path(root, f"{task}.zarr"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--tasks", nargs="+", required=True)
    parser.add_argument("--condition", default="paper")
    args = parser.parse_args()
    for task in args.tasks:
        print(task, compare(store_path(args.old, task, args.condition), store_path(args.new, task, args.condition)))


if __name__ == "__main__":
    main()
