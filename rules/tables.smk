# Table 2, its sentence-encoder rows and the verdict. Encoder kernel regression needs
# only the prompt files and the encoders (no forward pass): every unique text of a prompt file is embedded
# once per encoder, then each prompt's test input votes with its own demonstrations' labels.


rule embed_prompt_texts:
    input:
        prompts=PROMPTS,
        encoder=ENCODER_MANIFEST,
    output:
        EMBEDDINGS,
    log:
        "logs/embed_prompt_texts/{encoder}/{model}/{task}/{condition}.log",
    benchmark:
        "benchmarks/out/embed_prompt_texts/{encoder}/{model}/{task}/{condition}.tsv"
    conda:
        "../envs/models.yaml"
    threads: 2
    params:
        batch_size=lookup(dpath="analysis/encoder_batch_size", within=config),
        cache=lambda wildcards: f"results/embeddings/{wildcards.encoder}",
    script:
        "../scripts/embed_prompt_texts.py"


rule encoder_kernel_regression:
    input:
        prompts=PROMPTS,
        meta=PROMPT_META,
        embeddings=EMBEDDINGS,
    output:
        ENCODER_KR,
    log:
        "logs/encoder_kernel_regression/{encoder}/{model}/{task}/{condition}.log",
    conda:
        "../envs/analysis.yaml"
    params:
        tau=lookup(dpath="analysis/encoder_tau", within=config),
    script:
        "../scripts/encoder_kernel_regression.py"


rule table2:
    input:
        unpack(table2_inputs),
    output:
        csv=cell_report(
            f"{TABLE_DIR}/table2.csv",
            "table2.rst",
            {"table": "Table 2", "output": "CSV"},
            category="Table 2",
        ),
        md=cell_report(
            f"{TABLE_DIR}/table2.md",
            "table2.rst",
            {"table": "Table 2", "output": "Markdown"},
            category="Table 2",
        ),
        tex=f"{TABLE_DIR}/table2.tex",
    log:
        "logs/table2/{model}/{condition}.log",
    benchmark:
        "benchmarks/out/table2/{model}/{condition}.tsv"
    conda:
        "../envs/analysis.yaml"
    params:
        tasks=condition_task_list,
        encoders=SELECTED_ENCODERS,
        pooling=lookup(dpath="analysis/table_pooling", within=config),
        tau=lookup(dpath="analysis/encoder_tau", within=config),
        aliases=lookup(dpath="analysis/paper_aliases", within=config),
        bootstrap=lookup(dpath="analysis/bootstrap", within=config),
        vote_ties=lookup(dpath="analysis/vote_ties", within=config),
        nested=lookup(dpath="analysis/nested_bootstrap", within=config),
    script:
        "../scripts/table2.py"


rule table_encoder_kr:
    input:
        unpack(encoder_kr_inputs),
    output:
        csv=cell_report(
            f"{TABLE_DIR}/encoder_kr.csv",
            "table_encoder_kr.rst",
            {"table": "encoder KR", "output": "CSV"},
            category="Table 2",
        ),
        md=cell_report(
            f"{TABLE_DIR}/encoder_kr.md",
            "table_encoder_kr.rst",
            {"table": "encoder KR", "output": "Markdown"},
            category="Table 2",
        ),
        tex=f"{TABLE_DIR}/encoder_kr.tex",
    log:
        "logs/table_encoder_kr/{model}/{condition}.log",
    localrule: True
    conda:
        "../envs/analysis.yaml"
    params:
        tasks=condition_task_list,
        encoders=SELECTED_ENCODERS,
        tau=lookup(dpath="analysis/encoder_tau", within=config),
        aliases=lookup(dpath="analysis/paper_aliases", within=config),
        bootstrap=lookup(dpath="analysis/bootstrap", within=config),
    script:
        "../scripts/table_encoder_kr.py"


rule verdict:
    input:
        unpack(verdict_inputs),
    output:
        csv=cell_report(
            f"{TABLE_DIR}/verdict.csv",
            "verdict.rst",
            {"table": "verdict", "output": "CSV"},
            category="Table 2",
        ),
        md=cell_report(
            f"{TABLE_DIR}/verdict.md",
            "verdict.rst",
            {"table": "verdict", "output": "Markdown"},
            category="Table 2",
        ),
        heads=f"{TABLE_DIR}/verdict_heads.csv",
    log:
        "logs/verdict/{model}/{condition}.log",
    benchmark:
        "benchmarks/out/verdict/{model}/{condition}.tsv"
    conda:
        "../envs/analysis.yaml"
    params:
        tasks=condition_task_list,
        decision=lookup(dpath="analysis/decision", within=config),
        pooling=lookup(dpath="analysis/table_pooling", within=config),
        vote_ties=lookup(dpath="analysis/vote_ties", within=config),
    script:
        "../scripts/verdict.py"
