"""``capture.dtype: auto`` on a CPU with native bfloat16: run bfloat16 only where a measured check allows it.

:func:`kicl.devices.resolve_dtype` gives ``AUTO_BF16`` for a float32 model on such a CPU. Before the real work,
:func:`settle_dtype` runs the first ``capture.dtype_check_prompts`` prompts in float32 and in bfloat16 (each
model loaded from disk, as an explicit dtype would load it) and compares them (:func:`compare_outputs`):
ŷ (argmax of the label logits cast to float32) and the max-pooled kernel weights of every layer, head and
demonstration. bfloat16 is kept when the ŷ agreement is at least ``capture.dtype_check_min_agreement`` and no
kernel weight moves by more than ``capture.dtype_check_max_kernel_diff``; otherwise float32. The numbers and
the decision go to the log and to the store attrs (``dtype_check``).
"""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import replace

import numpy as np

from kicl.capture.batch import forward_shard, predict
from kicl.capture.model import load_capture_model
from kicl.capture.options import CaptureOptions
from kicl.devices import AUTO_BF16
from kicl.store.pooling import POOLINGS

log = logging.getLogger(__name__)


def check_outputs(model, shape, prompts: list[dict], meta: dict, options: CaptureOptions) -> tuple[dict, float]:
    """Label logits and kernel weights of ``prompts`` (no keys/values), and the seconds per prompt it took."""
    n_demos = max(len(p["demos"]) for p in prompts)
    start = time.perf_counter()
    out = forward_shard(model, shape, prompts, meta, replace(options, kv_prompts=0), n_demos)
    return out, (time.perf_counter() - start) / len(prompts)


def compare_outputs(reference: dict, candidate: dict) -> dict:
    """Agreement of two runs of the same prompts (``reference`` the float32 one), as plain floats.

    ``prediction_agreement``: share of prompts with the same ŷ; ``max_kernel_diff`` / ``mean_kernel_diff``:
    largest and mean |Δ| of the max-pooled kernel weights (layers × heads × demonstrations present);
    ``max_label_logit_diff``: largest |Δ| of a label logit.
    """
    agree = predict(reference["label_logits"]) == predict(candidate["label_logits"])
    pooling = POOLINGS.index("max")
    diff = np.abs(reference["kernel_weight"][:, pooling].astype(np.float64) - candidate["kernel_weight"][:, pooling])
    logit_diff = np.abs(reference["label_logits"].astype(np.float64) - candidate["label_logits"])
    return {
        "prompts": len(agree),
        "prediction_agreement": float(agree.mean()),
        "max_kernel_diff": float(np.nanmax(diff)),
        "mean_kernel_diff": float(np.nanmean(diff)),
        "max_label_logit_diff": float(logit_diff.max()),
    }


def measure_dtypes(manifest: dict, options: CaptureOptions, prompt_sets: dict) -> dict:
    """The agreement check of an ``AUTO_BF16`` dtype on the first ``capture.dtype_check_prompts`` prompts of each
    prompt set (``prompt_sets``: name, e.g. the task -> (prompts, meta)); return its record: the numbers of each
    set and of all together, the thresholds and the dtype chosen (deterministic)."""
    if options.dtype != AUTO_BF16:
        raise ValueError(f"the dtype check decides {AUTO_BF16!r} only, got {options.dtype!r}")
    samples = {name: (prompts[: options.dtype_check_prompts], meta) for name, (prompts, meta) in prompt_sets.items()}
    runs, seconds = {}, {}
    for dtype in ("float32", "bfloat16"):
        model, shape = load_capture_model(manifest, dtype, options.device)
        runs[dtype], seconds[dtype] = {}, []
        for name, (sample, meta) in samples.items():
            runs[dtype][name], per_prompt = check_outputs(model, shape, sample, meta, options)
            seconds[dtype].append(per_prompt)
        del model
        gc.collect()
    per_set = {name: compare_outputs(runs["float32"][name], runs["bfloat16"][name]) for name in samples}
    total = sum(numbers["prompts"] for numbers in per_set.values())
    numbers = {
        "prompts": total,
        "prediction_agreement": sum(n["prediction_agreement"] * n["prompts"] for n in per_set.values()) / total,
        "max_kernel_diff": max(n["max_kernel_diff"] for n in per_set.values()),
        "mean_kernel_diff": sum(n["mean_kernel_diff"] * n["prompts"] for n in per_set.values()) / total,
        "max_label_logit_diff": max(n["max_label_logit_diff"] for n in per_set.values()),
    }
    accept = (
        numbers["prediction_agreement"] >= options.dtype_check_min_agreement
        and numbers["max_kernel_diff"] <= options.dtype_check_max_kernel_diff
    )
    chosen = "bfloat16" if accept else "float32"
    log.info(
        "capture.dtype auto: bfloat16 against float32 on %d prompts (%s): ŷ agreement %.3f (need >= %.3f), max "
        "|Δ kernel weight| %.4f (allowed %.4f), %.3f s vs %.3f s per prompt: %s",
        total, ", ".join(samples), numbers["prediction_agreement"], options.dtype_check_min_agreement,
        numbers["max_kernel_diff"], options.dtype_check_max_kernel_diff, float(np.mean(seconds["bfloat16"])),
        float(np.mean(seconds["float32"])), chosen,
    )  # fmt: skip
    return {
        "requested": "auto",
        "candidate": "bfloat16",
        **numbers,
        "per_set": per_set,
        "min_agreement": options.dtype_check_min_agreement,
        "max_kernel_diff_allowed": options.dtype_check_max_kernel_diff,
        "chosen": chosen,
    }


def settle_dtype(
    manifest: dict, options: CaptureOptions, prompts: list[dict], meta: dict, decision: dict | None = None
):
    """Decide an ``AUTO_BF16`` dtype, by ``decision`` (a record of :func:`measure_dtypes`, e.g. the workflow's
    per-model check) or else by checking ``prompts``; return (model, shape, options, record): the model the capture
    goes on with, ``options.dtype`` the dtype chosen, ``record`` the check (store attrs ``dtype_check``)."""
    if options.dtype != AUTO_BF16:
        raise ValueError(f"settle_dtype decides {AUTO_BF16!r} only, got {options.dtype!r}")
    record = decision or measure_dtypes(manifest, options, {meta.get("task") or "prompts": (prompts, meta)})
    chosen = record["chosen"]
    model, shape = load_capture_model(manifest, chosen, options.device)
    return model, shape, replace(options, dtype=chosen), record


def write_dtype_decision(manifest, capture: dict, prompt_files: dict, out_json, threads: int | None = None) -> dict:
    """The workflow's per-model dtype check: ``capture`` (the config section) resolved for the model; with
    ``auto`` on a CPU with native bfloat16 the check runs on every prompt set of ``prompt_files`` (name ->
    (meta.json, prompts.jsonl)), else the record just names the dtype ``auto`` resolves to. Written to ``out_json``.
    """
    import json

    from kicl.data.models import read_manifest
    from kicl.fileio import write_text_atomic
    from kicl.prompts.files import read_prompt_set

    manifest = read_manifest(manifest)
    options = CaptureOptions.from_config(capture, manifest)
    options.fix_threads(threads)
    if options.dtype == AUTO_BF16:
        sets = {}
        for name, (meta_path, prompts_path) in prompt_files.items():
            meta, prompts = read_prompt_set(meta_path, prompts_path)
            sets[name] = (prompts, meta)
        record = measure_dtypes(manifest, options, sets)
    else:
        record = {"requested": capture.get("dtype", "auto"), "chosen": options.dtype, "checked": False}
        log.info("capture.dtype %s resolves to %s here: no check", record["requested"], options.dtype)
    write_text_atomic(out_json, json.dumps(record, indent=1) + "\n")
    return record
