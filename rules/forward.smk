# Forward pass: one job per (model, task, condition) runs every prompt once through the model and writes the
# forward store results/forward/{model}/{task}/{condition}.zarr (layout: docs/store.md). Work lands in resumable
# shards under results/forward/{model}/{task}/{condition}.parts/ (not a declared output, so a failed or killed job
# keeps them); rerunning the job continues from the last complete shard. P(o|x) of each input text comes from
# the shared cache results/simpred/{model}/ (not a declared output): a text is run once per model and settings,
# whichever condition or task needs it first. With capture.dtype auto on a CPU with native bfloat16, one
# dtype_check job per model runs the first prompts of every task in float32 and bfloat16 and decides for all
# of that model's forward passes.


rule dtype_check:
    input:
        unpack(dtype_check_inputs),
    output:
        DTYPE_CHECK,
    log:
        "logs/dtype_check/{model}.log",
    benchmark:
        "benchmarks/out/dtype_check/{model}.tsv"
    conda:
        "../envs/forward.yaml"
    threads: capture_threads(2)
    params:
        capture=lookup(dpath="capture", within=config),
        tasks=dtype_check_tasks,
    script:
        "../scripts/dtype_check.py"


rule forward_pass:
    input:
        unpack(forward_inputs),
    output:
        directory(FORWARD_STORE),
    log:
        "logs/forward_pass/{model}/{task}/{condition}.log",
    benchmark:
        "benchmarks/out/forward_pass/{model}/{task}/{condition}.tsv"
    conda:
        "../envs/forward.yaml"
    threads: capture_threads(2)
    resources:
        mem_mb=forward_mem_mb,
        runtime=forward_runtime,
        gpu=forward_gpus,
    params:
        capture=lookup(dpath="capture", within=config),
        record=forward_record,
        simpred_cache=lambda wildcards: f"results/simpred/{wildcards.model}",
        dtype_decision=lambda wildcards, input: getattr(input, "dtype", None),
    script:
        "../scripts/forward_pass.py"
