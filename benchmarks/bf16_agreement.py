"""bfloat16 against float32 on CPU for the capture: ŷ agreement, kernel-weight and label-logit differences, speed.

Usage (from the repo root, after the workflow has converted the model and built the prompt files):

    .venv/bin/python benchmarks/bf16_agreement.py [--model smollm2-135m] [--tasks movie_snippets trec tweet_sentiment]
        [--condition paper] [--prompts 64] [--threads 2] [--check-prompts 16]

For each task, the first ``--prompts`` prompts of results/prompts/{model}/{task}/{condition}/ run through the
capture (:func:`kicl.capture.batch.forward_shard`: last-row attention, label logits and kernel weights, batches
of ``capture.batch_size``) with the model loaded in float32 and in bfloat16, and are compared
as the ``capture.dtype: auto`` check compares them (:func:`kicl.capture.dtype_check.compare_outputs`): share of
prompts with the same ŷ, max and mean |Δ| of the max-pooled kernel weights (every layer, head and
demonstration), max |Δ| of a label logit; also the ICL accuracy in each dtype, and the same numbers on the first
``--check-prompts`` prompts alone (what the default check sees). Timing: both models stay loaded, each runs one
warm-up batch, then every batch runs in both dtypes, alternating which goes first (other processes' load hits
both alike); seconds per prompt = total / prompts, speed-up = median over batches of t_fp32 / t_bf16. Prints a Markdown table; JSON to benchmarks/out/bf16_agreement.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

DTYPES = ("float32", "bfloat16")


def paired_runs(models: dict, sample: list[dict], meta: dict, options) -> tuple[dict, dict]:
    """Label logits and kernel weights of ``sample`` in each dtype, batch by batch with the dtypes alternating
    (so that load from other processes hits both alike); returns (outputs, seconds of each batch per dtype)."""
    import time
    from dataclasses import replace

    import numpy as np

    from kicl.capture.batch import forward_shard

    options = replace(options, kv_prompts=0)
    n_demos = max(len(p["demos"]) for p in sample)
    for model, shape in models.values():  # warm-up: one batch per dtype
        forward_shard(model, shape, sample[: options.batch_size], meta, options, n_demos)
    parts = {dtype: [] for dtype in models}
    seconds = {dtype: [] for dtype in models}
    for index, start in enumerate(range(0, len(sample), options.batch_size)):
        batch = sample[start : start + options.batch_size]
        order = list(models) if index % 2 == 0 else list(models)[::-1]
        for dtype in order:
            model, shape = models[dtype]
            began = time.perf_counter()
            parts[dtype].append(forward_shard(model, shape, batch, meta, options, n_demos))
            seconds[dtype].append(time.perf_counter() - began)
    outputs = {
        dtype: {key: np.concatenate([p[key] for p in chunks]) for key in ("label_logits", "kernel_weight")}
        for dtype, chunks in parts.items()
    }
    return outputs, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tasks", nargs="+", default=["movie_snippets", "trec", "tweet_sentiment"])
    parser.add_argument("--condition", default="paper", help="prompt folder under results/prompts/{model}/{task}/")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--check-prompts", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/out/bf16_agreement.json")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import numpy as np
    import torch

    from kicl.capture.dtype_check import compare_outputs
    from kicl.capture.model import load_capture_model
    from kicl.capture.options import CaptureOptions
    from kicl.capture.run import predict
    from kicl.data.models import read_manifest
    from kicl.devices import cpu_has_native_bf16
    from kicl.prompts.files import read_prompt_set

    torch.set_num_threads(args.threads)
    manifest = read_manifest(Path(f"resources/models/{args.model}.json"))
    options = CaptureOptions.from_config({"dtype": "float32", "device": "cpu"}, manifest)
    models = {dtype: load_capture_model(manifest, dtype, "cpu") for dtype in DTYPES}
    rows = []
    for task in args.tasks:
        folder = Path(f"results/prompts/{args.model}/{task}/{args.condition}")
        if not folder.is_dir():
            folder = Path(f"results/prompts/{args.model}/{task}")
        meta, prompts = read_prompt_set(folder / "meta.json", folder / "prompts.jsonl")
        sample = prompts[: args.prompts]
        gold = np.array([p["gold"] for p in sample])
        outputs, seconds = paired_runs(models, sample, meta, options)
        numbers = compare_outputs(outputs["float32"], outputs["bfloat16"])
        first = {dtype: {k: v[: args.check_prompts] for k, v in out.items()} for dtype, out in outputs.items()}
        head = compare_outputs(first["float32"], first["bfloat16"])
        rows.append({
            "task": task,
            **numbers,
            "accuracy_float32": float((predict(outputs["float32"]["label_logits"]) == gold).mean()),
            "accuracy_bfloat16": float((predict(outputs["bfloat16"]["label_logits"]) == gold).mean()),
            "seconds_per_prompt_float32": float(np.sum(seconds["float32"]) / len(sample)),
            "seconds_per_prompt_bfloat16": float(np.sum(seconds["bfloat16"]) / len(sample)),
            "median_batch_speedup": float(np.median(np.array(seconds["float32"]) / np.array(seconds["bfloat16"]))),
            "mean_prompt_tokens": float(np.mean([len(p["input_ids"]) for p in sample])),
            "check": {key: head[key] for key in ("prompts", "prediction_agreement", "max_kernel_diff")},
        })  # fmt: skip
        print(f"{task}: done", file=sys.stderr, flush=True)

    print(f"model {args.model}, condition {args.condition}, {args.threads} threads, batch {options.batch_size}, "
          f"torch {torch.__version__}, CPU {torch.backends.cpu.get_cpu_capability()}, native bf16 "
          f"{cpu_has_native_bf16()}\n")  # fmt: skip
    print(
        "| task | prompts | tokens/prompt | ŷ agreement | max \\|Δ kw\\| | mean \\|Δ kw\\| | max \\|Δ label logit\\| "
        "| acc fp32 | acc bf16 | s/prompt fp32 | s/prompt bf16 | speed-up "
        f"| first {args.check_prompts}: agreement | first {args.check_prompts}: max \\|Δ kw\\| |"
    )
    print("|" + "---|" * 14)
    for r in rows:
        print(
            f"| {r['task']} | {r['prompts']} | {r['mean_prompt_tokens']:.0f} | {r['prediction_agreement']:.3f} "
            f"| {r['max_kernel_diff']:.4f} | {r['mean_kernel_diff']:.5f} | {r['max_label_logit_diff']:.3f} "
            f"| {r['accuracy_float32']:.3f} | {r['accuracy_bfloat16']:.3f} "
            f"| {r['seconds_per_prompt_float32']:.3f} | {r['seconds_per_prompt_bfloat16']:.3f} "
            f"| {r['median_batch_speedup']:.2f} "
            f"| {r['check']['prediction_agreement']:.3f} | {r['check']['max_kernel_diff']:.4f} |"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"args": vars(args), "platform": platform.platform(), "torch": torch.__version__, "rows": rows}
    out.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
