# Table 2 and its sentence-encoder rows, plus the report's summary page. Encoder kernel regression needs
# only the prompt files and the encoders (no forward pass): every unique text of a prompt file is embedded
# once per encoder, then each prompt's test input votes with its own demonstrations' labels.


rule embed_prompt_texts:
    input:
        prompts="results/prompts/{model}/{task}/{condition}/prompts.jsonl",
        encoder="resources/encoders/{encoder}.json",
    output:
        "results/encoders/{encoder}/{model}/{task}/{condition}.npz",
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
        prompts="results/prompts/{model}/{task}/{condition}/prompts.jsonl",
        meta="results/prompts/{model}/{task}/{condition}/meta.json",
        embeddings="results/encoders/{encoder}/{model}/{task}/{condition}.npz",
    output:
        "results/encoder_kr/{encoder}/{model}/{task}/{condition}.csv",
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
        csv=report(
            "results/tables/{model}/{condition}/table2.csv",
            caption="../report/table2.rst",
            category="Table 2",
            subcategory="{model} / {condition}",
            labels={"table": "Table 2", "output": "CSV"},
        ),
        md=report(
            "results/tables/{model}/{condition}/table2.md",
            caption="../report/table2.rst",
            category="Table 2",
            subcategory="{model} / {condition}",
            labels={"table": "Table 2", "output": "Markdown"},
        ),
        tex="results/tables/{model}/{condition}/table2.tex",
    log:
        "logs/table2/{model}/{condition}.log",
    benchmark:
        "benchmarks/out/table2/{model}/{condition}.tsv"
    conda:
        "../envs/analysis.yaml"
    params:
        tasks=condition_task_list,
        kr_keys=encoder_task_pairs,
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
        kr=encoder_kr_csvs,
    output:
        csv=report(
            "results/tables/{model}/{condition}/encoder_kr.csv",
            caption="../report/table_encoder_kr.rst",
            category="Table 2",
            subcategory="{model} / {condition}",
            labels={"table": "encoder KR", "output": "CSV"},
        ),
        md=report(
            "results/tables/{model}/{condition}/encoder_kr.md",
            caption="../report/table_encoder_kr.rst",
            category="Table 2",
            subcategory="{model} / {condition}",
            labels={"table": "encoder KR", "output": "Markdown"},
        ),
        tex="results/tables/{model}/{condition}/encoder_kr.tex",
    log:
        "logs/table_encoder_kr/{model}/{condition}.log",
    conda:
        "../envs/analysis.yaml"
    params:
        kr_keys=encoder_task_pairs,
        tau=lookup(dpath="analysis/encoder_tau", within=config),
        aliases=lookup(dpath="analysis/paper_aliases", within=config),
        bootstrap=lookup(dpath="analysis/bootstrap", within=config),
    script:
        "../scripts/table_encoder_kr.py"


rule verdict:
    input:
        unpack(verdict_inputs),
    output:
        csv=report(
            "results/tables/{model}/{condition}/verdict.csv",
            caption="../report/verdict.rst",
            category="Table 2",
            subcategory="{model} / {condition}",
            labels={"table": "verdict", "output": "CSV"},
        ),
        md=report(
            "results/tables/{model}/{condition}/verdict.md",
            caption="../report/verdict.rst",
            category="Table 2",
            subcategory="{model} / {condition}",
            labels={"table": "verdict", "output": "Markdown"},
        ),
        heads="results/tables/{model}/{condition}/verdict_heads.csv",
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


rule report_summary:
    input:
        summary_inputs(),
    output:
        html=report(
            "results/summary/index.html",
            caption="../report/summary.rst",
            category="Summary",
            labels={"page": "figures and tables"},
        ),
        md="results/summary/summary.md",
    log:
        "logs/report_summary.log",
    conda:
        "../envs/analysis.yaml"
    params:
        entries=summary_entries,
        benchmarks="benchmarks/out",
    script:
        "../scripts/report_summary.py"
