# ICL prompts with a segment map (prompt-file contract): one job per (model, task) tokenises every prompt
# with the model's tokenizer, checks the label words and the context length before any forward pass.


rule build_prompts:
    input:
        unpack(prompt_inputs),
    output:
        meta="results/prompts/{model}/{task}/meta.json",
        prompts="results/prompts/{model}/{task}/prompts.jsonl",
    log:
        "logs/build_prompts/{model}/{task}.log",
    conda:
        "../envs/data.yaml"
    params:
        spec=task_spec,
        protocol=lookup(dpath="protocol", within=config),
    script:
        "../scripts/build_prompts.py"
