"""``capture.dtype: auto`` on a CPU with native bfloat16: run bfloat16 only where a measured check allows it.

:func:`kicl.config.resolve_dtype` gives ``AUTO_BF16`` for a float32 model on such a CPU. Before the real work,
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

from kicl.capture.batch import forward_shard
from kicl.capture.model import load_capture_model
from kicl.capture.options import AUTO_BF16, CaptureOptions
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
    from kicl.capture.run import predict

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


def settle_dtype(manifest: dict, options: CaptureOptions, prompts: list[dict], meta: dict):
    """Decide an ``AUTO_BF16`` dtype by the agreement check; return (model, shape, options, record).

    The model is the one the capture goes on with (bfloat16 or float32); ``options.dtype`` is the dtype chosen;
    ``record`` the check's numbers, thresholds and decision (store attrs ``dtype_check``; deterministic).
    """
    if options.dtype != AUTO_BF16:
        raise ValueError(f"settle_dtype decides {AUTO_BF16!r} only, got {options.dtype!r}")
    sample = prompts[: options.dtype_check_prompts]
    model, shape = load_capture_model(manifest, "float32", options.device)
    reference, seconds_f32 = check_outputs(model, shape, sample, meta, options)
    del model
    gc.collect()
    model, shape = load_capture_model(manifest, "bfloat16", options.device)
    candidate, seconds_bf16 = check_outputs(model, shape, sample, meta, options)
    numbers = compare_outputs(reference, candidate)
    accept = (
        numbers["prediction_agreement"] >= options.dtype_check_min_agreement
        and numbers["max_kernel_diff"] <= options.dtype_check_max_kernel_diff
    )
    chosen = "bfloat16" if accept else "float32"
    record = {
        "requested": "auto",
        "candidate": "bfloat16",
        **numbers,
        "min_agreement": options.dtype_check_min_agreement,
        "max_kernel_diff_allowed": options.dtype_check_max_kernel_diff,
        "chosen": chosen,
    }
    log.info(
        "capture.dtype auto: bfloat16 against float32 on %d prompts: ŷ agreement %.3f (need >= %.3f), max |Δ kernel "
        "weight| %.4f (allowed %.4f), %.3f s vs %.3f s per prompt: %s",
        numbers["prompts"], numbers["prediction_agreement"], options.dtype_check_min_agreement,
        numbers["max_kernel_diff"], options.dtype_check_max_kernel_diff, seconds_bf16, seconds_f32, chosen,
    )  # fmt: skip
    if not accept:
        del model
        gc.collect()
        model, shape = load_capture_model(manifest, "float32", options.device)
    return model, shape, replace(options, dtype=chosen), record
