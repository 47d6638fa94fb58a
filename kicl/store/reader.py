"""Read-only access to a forward store (`results/forward/{model}/{task}.zarr`) for the figure and table rules."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import xarray as xr

# variable -> dimensions, as fixed by the forward-store contract
CONTRACT = {
    "attention": ("prompt", "layer", "head", "position"),
    "length": ("prompt",),
    "split": ("prompt",),
    "gold": ("prompt",),
    "prediction": ("prompt",),
    "label_logits": ("prompt", "label"),
    "demo_label": ("prompt", "demo"),
    "kernel_weight": ("prompt", "pooling", "layer", "head", "demo"),
    "input_start": ("prompt", "demo"),
    "input_end": ("prompt", "demo"),
    "label_pos": ("prompt", "demo"),
    "delim_start": ("prompt", "demo"),
    "delim_end": ("prompt", "demo"),
    "test_start": ("prompt",),
    "test_end": ("prompt",),
    "sim_pred": ("prompt", "demo"),
    "demo_top_token": ("prompt", "demo"),
    "test_top_token": ("prompt",),
}
KV_CONTRACT = ("kv_prompt", "layer", "kv_head", "demo", "offset", "head_dim")


class StoreError(ValueError):
    """A forward store is missing something an analysis needs."""


def open_store(path, needs=()) -> xr.Dataset:
    """Open a forward store lazily (no dask) and check that the variables in `needs` exist with contract dims."""
    path = Path(path)
    if not path.exists():
        raise StoreError(f"forward store {path} does not exist")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # 'no consolidated metadata' fallback
        ds = xr.open_zarr(path, chunks=None)
    for name in needs:
        if name not in ds.variables:
            raise StoreError(f"forward store {path} has no variable '{name}' (needed here; see the store contract)")
        want = CONTRACT.get(name, KV_CONTRACT if name in ("keys", "keys_prerope", "values") else None)
        if want is not None and tuple(ds[name].dims) != want:
            raise StoreError(f"forward store {path}: '{name}' has dims {ds[name].dims}, contract says {want}")
    return ds


def label_names(ds: xr.Dataset) -> list[str]:
    """Label names from the store attributes, else label0..label{K-1} from the label_logits width."""
    names = ds.attrs.get("label_names")
    if names:
        return [str(n) for n in names]
    return [f"label{k}" for k in range(ds.sizes["label"])]


def string_values(array) -> np.ndarray:
    """A string variable as a plain numpy unicode array (the store may use variable-length StringDType)."""
    return np.array([str(v) for v in np.asarray(array.values).tolist()])


def split_mask(ds: xr.Dataset, splits) -> np.ndarray:
    """Boolean mask over prompts whose split is in `splits` (e.g. ["select", "heldout"])."""
    split = string_values(ds["split"])
    unknown = set(splits) - {"select", "heldout"}
    if unknown:
        raise StoreError(f"unknown split(s) {sorted(unknown)}; a store has 'select' and 'heldout'")
    return np.isin(split, list(splits))


def prompt_batches(indices, batch_size: int):
    """Yield slices of the sorted prompt indices, `batch_size` at a time (the store is chunked by prompt)."""
    indices = np.asarray(indices)
    for start in range(0, len(indices), batch_size):
        yield indices[start : start + batch_size]


def poolings(ds: xr.Dataset, wanted) -> list[str]:
    """The kernel-weight poolings to analyse: `wanted` (a list) checked against the store, or all when empty."""
    have = [str(p) for p in ds["pooling"].values]
    if not wanted:
        return have
    missing = [p for p in wanted if p not in have]
    if missing:
        raise StoreError(f"config analysis.poolings asks for {missing}, the store has {have}")
    return list(wanted)
