"""ICL accuracy of a model on a task with kicl's own prompts: argmax over the label tokens at the last position.

A one-off sanity check of the input side (no attention capture). Run it after the data and model rules:

    snakemake -c2 results/prompts/smollm2-135m/movie_snippets/paper/meta.json
    python benchmarks/icl_accuracy.py --task movie_snippets --model smollm2-135m --n 200 --demos 0 8

It prints one line per (k, strategy): accuracy, predicted and gold label counts, mean prompt length, seconds.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from snakemake.utils import validate

from kicl.data.models import load_model, load_tokenizer, read_manifest
from kicl.data.tasks import drop_empty, load_split
from kicl.prompts.build import PromptTables, build_prompt_set
from kicl.prompts.options import Protocol

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="movie_snippets")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--n", type=int, default=200, help="test points (drawn like protocol.n_select)")
    parser.add_argument("--demos", type=int, nargs="+", default=[0, 8])
    parser.add_argument("--strategies", nargs="+", default=["random"])
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (2 on a loaded 2-core host was 4x slower)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    validate(config, str(REPO / "schemas" / "config.schema.yaml"))
    spec = config["tasks"][args.task]
    manifest = read_manifest(REPO / "resources" / "models" / f"{args.model}.json")
    manifest["path"] = str(REPO / manifest["path"])
    tokenizer, model = load_tokenizer(manifest), load_model(manifest)
    resources = REPO / "resources" / "tasks" / args.task
    eval_table = load_split(resources / f"{spec['eval_split']}.parquet", spec)
    pool = drop_empty(load_split(resources / f"{spec['demo_split']}.parquet", spec), "pool")
    for k in args.demos:
        for strategy in args.strategies if k else ["random"]:
            overrides = {"n_demos": k, "n_select": args.n, "n_heldout": 0, "demo_strategy": strategy}
            protocol = Protocol.of(config["protocol"] | overrides)
            tables = PromptTables(eval_table, pool)
            meta, records = build_prompt_set(
                args.task, spec, args.model, tokenizer, tables, protocol, manifest["max_length"]
            )
            label_ids = torch.tensor(meta["label_token_ids"])
            start, predictions = time.time(), []
            with torch.no_grad():
                for record in records:
                    logits = model(torch.tensor([record["input_ids"]])).logits[0, -1]
                    predictions.append(int(logits[label_ids].argmax()))
            gold, predictions = np.array([r["gold"] for r in records]), np.array(predictions)
            n_labels = len(label_ids)
            print(
                f"{args.task} {args.model} k={k} strategy={strategy} n={len(records)} "
                f"accuracy={np.mean(predictions == gold):.3f} "
                f"predicted={np.bincount(predictions, minlength=n_labels).tolist()} "
                f"gold={np.bincount(gold, minlength=n_labels).tolist()} "
                f"mean_tokens={meta['prompt_length']['mean']:.0f} seconds={time.time() - start:.0f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
