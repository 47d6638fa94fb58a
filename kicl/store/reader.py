"""Read-only access to a forward store (`results/forward/{model}/{task}/{condition}.zarr`) for figures and tables."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import xarray as xr

from kicl.store.schema import ALWAYS, SCHEMA, dtype_matches, forward_variables


class StoreError(ValueError):
    """A forward store is missing something an analysis needs, or does not match the store schema."""


def check_variables(ds: xr.Dataset, names, where: str = "forward store") -> None:
    """Raise StoreError unless every variable in ``names`` is present with the schema's dims and dtype."""
    for name in names:
        declared = SCHEMA.get(name)
        if name not in ds.variables:
            when = f" (written {declared.present})" if declared is not None and declared.present != ALWAYS else ""
            raise StoreError(f"{where} has no variable '{name}'{when}; it is needed here (see docs/store.md)")
        if declared is None:
            continue
        if tuple(ds[name].dims) != declared.dims:
            raise StoreError(f"{where}: '{name}' has dims {tuple(ds[name].dims)}, the schema says {declared.dims}")
        if not dtype_matches(declared.dtype, ds[name].dtype):
            raise StoreError(f"{where}: '{name}' has dtype {ds[name].dtype}, the schema says {declared.dtype}")


def open_store(path, needs=()) -> xr.Dataset:
    """Open a forward store lazily (no dask); check that the variables in ``needs`` match the store schema.

    ``needs`` names variables of ``kicl.store.schema.VARIABLES`` (dims and dtype are checked) or, for other
    names, variables that must merely exist. ``needs="all"`` checks every variable the store should have
    (keys/values when it has a ``kv_prompt`` dimension; pre-rotary keys when its ``rotary`` attribute is true).
    """
    path = Path(path)
    if not path.exists():
        raise StoreError(f"forward store {path} does not exist")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # 'no consolidated metadata' fallback
        ds = xr.open_zarr(path, chunks=None)
    if isinstance(needs, str):
        if needs != "all":
            raise ValueError(f"open_store: needs is a list of variable names or 'all', not {needs!r}")
        with_kv = ds.sizes.get("kv_prompt", 0) > 0
        calibrated, hubness = "label_logits_cf" in ds, "demo_hubness" in ds
        rotary = bool(ds.attrs.get("rotary", False))
        needs = forward_variables(rotary=rotary, with_kv=with_kv, calibrated=calibrated, hubness=hubness)
    check_variables(ds, needs, where=f"forward store {path}")
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
