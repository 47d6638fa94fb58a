# Forward pass: one job per (model, task, condition) runs every prompt once through the model and writes the
# forward store results/forward/{model}/{task}/{condition}.zarr (layout: docs/store.md). Work lands in resumable
# shards under results/forward/{model}/{task}/{condition}.parts/ (not a declared output, so a failed or killed job
# keeps them); rerunning the job continues from the last complete shard. P(o|x) of each input text comes from
# the shared cache results/simpred/{model}/ (not a declared output): a text is run once per model and settings,
# whichever condition or task needs it first.


rule forward_pass:
    input:
        meta="results/prompts/{model}/{task}/{condition}/meta.json",
        prompts="results/prompts/{model}/{task}/{condition}/prompts.jsonl",
        model="resources/models/{model}.json",
    output:
        directory("results/forward/{model}/{task}/{condition}.zarr"),
    log:
        "logs/forward_pass/{model}/{task}/{condition}.log",
    benchmark:
        "benchmarks/out/forward_pass/{model}/{task}/{condition}.tsv"
    conda:
        "../envs/forward.yaml"
    threads: 2
    resources:
        mem_mb=forward_mem_mb,
        runtime=forward_runtime,
        gpu=forward_gpus,
    params:
        capture=lookup(dpath="capture", within=config),
        record=forward_record,
        simpred_cache=lambda wildcards: f"results/simpred/{wildcards.model}",
    script:
        "../scripts/forward_pass.py"
