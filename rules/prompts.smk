# ICL prompts with a segment map (prompt-file contract): one job per (model, task, condition) tokenises every
# prompt of the condition's protocol (config protocol: + conditions.<condition>) with the model's tokenizer, checks the label words and the context length before any forward pass.


rule build_prompts:
    input:
        unpack(prompt_inputs),
    output:
        meta=PROMPT_META,
        prompts=PROMPTS,
    log:
        "logs/build_prompts/{model}/{task}/{condition}.log",
    conda:
        "../envs/data.yaml"
    threads: prompt_threads
    params:
        spec=task_spec,
        protocol=condition_protocol_of,
        other_spec=other_task_spec,
        capture=model_kernel_capture,
        simpred_cache=lambda wildcards: f"results/simpred/{wildcards.model}",
        encoder_cache=prompt_encoder_cache,
    script:
        "../scripts/build_prompts.py"
