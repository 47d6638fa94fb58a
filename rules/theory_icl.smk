# Theorem 1 inside a trained transformer: a small causal LM (GPT-J or Llama config, random init, seeded) is
# pre-trained on the label world (a delimiter-reset mixture of HMMs, kicl/theory/icl_world.py), then its ICL is
# compared, for every number of demonstrations n, with the exact posterior, the Eq. 6 kernel estimate, its
# selected head's attention vote and attention-free baselines. The trained folder is an ordinary HF model
# (models.<theory_icl.chain.model>, source: local) and the world's task (tasks.<theory_icl.chain.task>, source:
# local) feeds the existing chain: prompts -> forward capture -> store -> Figs 2-5.


rule theory_icl_world:
    output:
        test="results/theory_icl/world/test.jsonl",
        train="results/theory_icl/world/train.jsonl",
    log:
        "logs/theory_icl/world.log",
    conda:
        "../envs/theory_icl.yaml"
    params:
        cfg=lookup(dpath="theory_icl", within=config),
    script:
        "../scripts/theory_icl_world.py"


rule theory_icl_pretrain:
    output:
        model=directory("results/theory_icl/model"),
        loss="results/theory_icl/training_loss.csv",
    log:
        "logs/theory_icl/pretrain.log",
    benchmark:
        "benchmarks/out/theory_icl_pretrain.tsv"
    conda:
        "../envs/theory_icl.yaml"
    threads: 1  # training uses one thread (theory_icl.train.threads): 2 threads were slower under load
    resources:
        mem_mb=2000,
        runtime=lambda wildcards, attempt: 30 * attempt,
    params:
        cfg=lookup(dpath="theory_icl", within=config),
    script:
        "../scripts/theory_icl_pretrain.py"


rule theory_icl_loss_figure:
    input:
        loss=rules.theory_icl_pretrain.output.loss,
    output:
        figure=report(
            "results/theory_icl/training_loss.png",
            caption="../report/theory_icl_loss.rst",
            category="Theory",
            subcategory="Trained transformer",
            labels={"output": "training loss"},
        ),
        data="results/theory_icl/training_loss_figure.csv",
    log:
        "logs/theory_icl/loss_figure.log",
    conda:
        "../envs/theory_icl.yaml"
    script:
        "../scripts/theory_icl_loss_figure.py"


rule theory_icl_compare:
    input:
        model=rules.theory_icl_pretrain.output.model,
    output:
        table="results/theory_icl/comparison.csv",
        heads="results/theory_icl/comparison_heads.csv",
        markdown=report(
            "results/theory_icl/comparison.md",
            caption="../report/theory_icl_table.rst",
            category="Theory",
            subcategory="Trained transformer",
            labels={"output": "table"},
        ),
    log:
        "logs/theory_icl/compare.log",
    benchmark:
        "benchmarks/out/theory_icl_compare.tsv"
    conda:
        "../envs/theory_icl.yaml"
    threads: 2
    resources:
        mem_mb=2000,
    params:
        cfg=lookup(dpath="theory_icl", within=config),
    script:
        "../scripts/theory_icl_compare.py"


rule theory_icl_figure:
    input:
        table=rules.theory_icl_compare.output.table,
    output:
        figure=report(
            "results/theory_icl/comparison.png",
            caption="../report/theory_icl_figure.rst",
            category="Theory",
            subcategory="Trained transformer",
            labels={"output": "figure"},
        ),
        data="results/theory_icl/comparison_figure.csv",
    log:
        "logs/theory_icl/figure.log",
    conda:
        "../envs/theory_icl.yaml"
    script:
        "../scripts/theory_icl_figure.py"


# `snakemake theory_icl_all`: this stage and the chain on its model and task, without the rest of the workflow
rule theory_icl_all:
    input:
        lambda wildcards: theory_icl_outputs(),
    localrule: True
