"""The numeric noise floor of the thread count: one task's forward pass and causal ablation at 1 and 2 intra-op
threads, in bfloat16 and float32.

Usage (from the repo root, after the workflow has converted the model and built the prompt files):

    .venv/bin/python benchmarks/noise_floor.py [--model smollm2-135m] [--task trec] [--condition paper]
        [--prompts 16] [--dtypes bfloat16 float32] [--root .] [--model-dir DIR]

The first ``--prompts`` select and the first ``--prompts`` held-out prompts of
results/prompts/{model}/{task}/{condition}/ go through :func:`kicl.capture.run.run_capture` (the forward_pass
job's entry point, P(o|x) included) once per (dtype, threads), with ``capture.intra_op_threads`` set to the
thread count, so each run computes as a job of that many cores did before the setting existed. Per dtype, 2
threads against 1: max |Δ| of a kernel weight (every pooling, layer, head, demonstration), of a label logit and
of sim_pred, and the ŷ flips. The causal stage (:func:`kicl.capture.causal.run_causal_ablation`, k = [1, 4], zero and
mean, 3 random draws) then runs on the 1-thread store of each dtype at 1 and 2 threads; reported: the largest
change of an accuracy over the conditions, and the prompts whose ŷ differs. ``--model-dir`` points at another
converted model folder (e.g. a tiny random Llama) when the workflow's is not there. Prints a Markdown table;
JSON to benchmarks/out/noise_floor.json.

Measured (SmolLM2-135M, trec, 6 + 6 prompts, 2-core AMD EPYC with avx512_bf16, torch 2.13 / oneDNN 3.12):
every difference is exactly 0 in bfloat16 and float32 (kernel weights, label logits, sim_pred, ŷ, causal
accuracies and margins), so on this CPU the thread count does not reach the numbers; capture.intra_op_threads
guards CPUs whose kernels split a reduction by thread. Under a loaded machine (load 5 on 2 cores) the 2-thread
runs took 3-4 times as long as the 1-thread ones (capture 48.9 s against 11.9 s).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

THREADS = (1, 2)
CAUSAL = {"k": [1, 4], "modes": ["zero", "mean"], "random_draws": 3, "mean_prompts": 4, "batch_size": 8}


def subset_prompts(meta_path: Path, prompts_path: Path, n: int, folder: Path) -> tuple[Path, Path]:
    """The first ``n`` select and first ``n`` held-out prompts, written as a prompt set of their own."""
    records = [json.loads(line) for line in prompts_path.read_text().splitlines()]
    chosen = [r for r in records if r.get("split") == "select"][:n] + [
        r for r in records if r.get("split") == "heldout"
    ][:n]
    folder.mkdir(parents=True, exist_ok=True)
    chosen = [{**record, "prompt_id": row} for row, record in enumerate(chosen)]
    meta = json.loads(meta_path.read_text())
    meta.update(
        n_prompts=len(chosen),
        n_select=min(n, meta.get("n_select", n)),
        n_heldout=len(chosen) - min(n, meta.get("n_select", n)),
    )
    (folder / "meta.json").write_text(json.dumps(meta))
    (folder / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chosen))
    return folder / "meta.json", folder / "prompts.jsonl"


def capture_runs(meta, prompts, manifest, dtype: str, work: Path) -> dict:
    """The store of each thread count (opened), and the seconds each took."""
    from kicl.capture.run import run_capture
    from kicl.store.reader import open_store

    stores, seconds = {}, {}
    for threads in THREADS:
        capture = {"dtype": dtype, "kv_prompts": 0, "intra_op_threads": threads}
        began = time.perf_counter()
        path = run_capture(meta, prompts, manifest, work / f"{dtype}-{threads}.zarr", capture)
        seconds[threads] = time.perf_counter() - began
        stores[threads] = open_store(path, needs="all")
    return {"stores": stores, "seconds": seconds}


def store_deltas(one, two) -> dict:
    """Max |Δ| of kernel weights, label logits and sim_pred, and ŷ flips, between two stores of one prompt set."""

    def max_abs(name):
        a, b = one[name].values.astype(np.float64), two[name].values.astype(np.float64)
        return float(np.nanmax(np.abs(a - b))) if a.size else 0.0

    return {
        "max_kernel_weight_diff": max_abs("kernel_weight"),
        "max_label_logit_diff": max_abs("label_logits"),
        "max_sim_pred_diff": max_abs("sim_pred"),
        "yhat_flips": int((one["prediction"].values != two["prediction"].values).sum()),
        "prompts": int(one.sizes["prompt"]),
    }


def causal_deltas(meta, prompts, manifest, store, dtype: str, work: Path) -> dict:
    """run_causal_ablation on one store at 1 and 2 threads: the largest accuracy change over the interventions."""
    from kicl.analysis.causal import write_head_ranking
    from kicl.capture.causal import CausalFiles, run_causal_ablation
    from kicl.config import defaults_for

    settings = {**defaults_for("causal"), **CAUSAL}
    ranking = work / "head_ranking.csv"
    write_head_ranking(store, ranking, settings["pooling"], settings["rank_by"])
    frames, seconds = {}, {}
    for threads in THREADS:
        capture = {"dtype": dtype, "intra_op_threads": threads}
        began = time.perf_counter()
        files = CausalFiles(meta, prompts, manifest, store, ranking, work / f"c{threads}.csv", work / f"h{threads}.csv")
        frames[threads] = run_causal_ablation(files, CAUSAL, capture)
        seconds[threads] = time.perf_counter() - began
    keys = ["mode", "ranking", "k", "draw"]
    accuracy = {t: f.groupby(keys)["correct"].mean() for t, f in frames.items()}
    joined = frames[1].merge(frames[2], on=[*keys, "prompt"], suffixes=("_1", "_2"))
    return {
        "max_accuracy_diff": float((accuracy[1] - accuracy[2]).abs().max()),
        "max_margin_diff": float((joined["margin_1"] - joined["margin_2"]).abs().max()),
        "yhat_differs": int((joined["pred_1"] != joined["pred_2"]).sum()),
        "rows": len(joined),
        "seconds": seconds,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--task", default="trec")
    parser.add_argument("--condition", default="paper")
    parser.add_argument("--prompts", type=int, default=16, help="select and held-out prompts each")
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
    parser.add_argument("--root", type=Path, default=Path("."), help="the workflow folder with results/ and resources/")
    parser.add_argument("--model-dir", type=Path, help="a converted model folder (default: resources/models/<model>)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/noise_floor.json"))
    args = parser.parse_args(argv)

    folder = args.root / "results/prompts" / args.model / args.task / args.condition
    model_dir = args.model_dir or args.root / "resources/models" / args.model
    for path in (folder / "meta.json", folder / "prompts.jsonl", model_dir / "config.json"):
        if not path.exists():
            sys.exit(f"noise_floor: {path} is missing (run the workflow's prompts and model rules first)")
    manifest = {"name": args.model, "path": str(model_dir), "dtype": "float32", "device": "cpu"}
    results = {"model": args.model, "task": args.task, "prompts_per_split": args.prompts, "cpu": platform.processor()}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        meta, prompts = subset_prompts(folder / "meta.json", folder / "prompts.jsonl", args.prompts, work / "prompts")
        for dtype in args.dtypes:
            runs = capture_runs(meta, prompts, manifest, dtype, work)
            row = store_deltas(runs["stores"][1], runs["stores"][2])
            row["capture_seconds"] = runs["seconds"]
            row["causal"] = causal_deltas(meta, prompts, manifest, work / f"{dtype}-1.zarr", dtype, work)
            results[dtype] = row
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"{args.model} / {args.task}: {args.prompts} select + {args.prompts} held-out prompts, 2 threads vs 1")
    print("| dtype | max Δ kernel weight | max Δ label logit | max Δ sim_pred | ŷ flips | max Δ causal accuracy "
          "| causal ŷ differs | capture s (1 / 2 thr) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for dtype in args.dtypes:
        r, c = results[dtype], results[dtype]["causal"]
        print(f"| {dtype} | {r['max_kernel_weight_diff']:.3g} | {r['max_label_logit_diff']:.3g} | "
              f"{r['max_sim_pred_diff']:.3g} | {r['yhat_flips']}/{r['prompts']} | {c['max_accuracy_diff']:.3g} | "
              f"{c['yhat_differs']}/{c['rows']} | {r['capture_seconds'][1]:.1f} / {r['capture_seconds'][2]:.1f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
