# Causal test of the kernel heads (issue 13), for the tasks in causal.tasks: on the held-out prompts, ablate
# the top-k heads by reconstruction of ŷ on the select prompts, seeded sets of k layer-matched random heads
# outside the top k and the bottom-k, at the last token (zero, mean, attention knockout of the label tokens).
# causal_ranking ranks the heads from the forward store (the analysis env); causal_ablation reads that ranking
# and needs the model (the forward env; torch at capture.intra_op_threads); fig_causal_ablation turns it into
# paired effects, the rank p-value of the top-k effect among the random draws and two-level intervals, and
# draws it.


rule causal_ranking:
    input:
        store=FORWARD_STORE,
    output:
        ranking="results/causal/{model}/{task}/{condition}/head_ranking.csv",
    log:
        "logs/causal_ranking/{model}/{task}/{condition}.log",
    conda:
        "../envs/analysis.yaml"
    params:
        pooling=lookup(dpath="causal/pooling", within=config),
        rank_by=lookup(dpath="causal/rank_by", within=config),
    script:
        "../scripts/causal_ranking.py"


rule causal_ablation:
    input:
        meta=PROMPT_META,
        prompts=PROMPTS,
        model=MODEL_MANIFEST,
        store=FORWARD_STORE,
        ranking=rules.causal_ranking.output.ranking,
    output:
        prompts="results/causal/{model}/{task}/{condition}/ablation_prompts.csv",
        heads="results/causal/{model}/{task}/{condition}/ablation_heads.csv",
    log:
        "logs/causal_ablation/{model}/{task}/{condition}.log",
    benchmark:
        "benchmarks/out/causal_ablation/{model}/{task}/{condition}.tsv"
    conda:
        "../envs/forward.yaml"
    threads: capture_threads(2)
    resources:
        gpu=forward_gpus,
    params:
        causal=lookup(dpath="causal", within=config),
        capture=lookup(dpath="capture", within=config),
    script:
        "../scripts/causal_ablation.py"


rule fig_causal_ablation:
    input:
        prompts="results/causal/{model}/{task}/{condition}/ablation_prompts.csv",
    output:
        png=cell_report(
            f"{FIGURE_DIR}/fig_causal_ablation.png",
            "fig_causal_ablation.rst",
            {"figure": "Causal ablation", "output": "curves"},
        ),
        csv=cell_report(
            f"{FIGURE_DIR}/fig_causal_ablation.csv",
            "figure_csv.rst",
            {"figure": "Causal ablation", "output": "data (CSV)"},
        ),
    log:
        "logs/fig_causal_ablation/{model}/{task}/{condition}.log",
    benchmark:
        "benchmarks/out/fig_causal_ablation/{model}/{task}/{condition}.tsv"
    conda:
        "../envs/analysis.yaml"
    params:
        bootstrap=lookup(dpath="analysis/bootstrap", within=config),
    script:
        "../scripts/fig_causal_ablation.py"
