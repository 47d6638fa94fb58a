# The ablation stage: per (model, task), every selected condition (config conditions:, run.conditions) side by
# side, paired on the shared test points: ICL accuracy and its paired difference to the reference condition,
# the ŷ-change rate, order-permutation groups, the selected head's held-out agreement (head chosen on the
# reference and re-selected within each condition) beside the attention-free baselines and encoder kernel
# regression, a bandwidth curve, a label-noise curve and a Table 1 analogue (out-of-distribution test inputs).


rule ablation_table:
    input:
        unpack(ablation_inputs),
    output:
        csv=report(
            "results/ablation/{model}/{task}/conditions.csv",
            caption="../report/ablation_table.rst",
            category="Ablations",
            subcategory="{model} / {task}",
            labels={"table": "conditions", "output": "CSV"},
        ),
        md=report(
            "results/ablation/{model}/{task}/conditions.md",
            caption="../report/ablation_table.rst",
            category="Ablations",
            subcategory="{model} / {task}",
            labels={"table": "conditions", "output": "Markdown"},
        ),
        tex="results/ablation/{model}/{task}/conditions.tex",
        order_csv="results/ablation/{model}/{task}/order_groups.csv",
        table1_csv="results/ablation/{model}/{task}/table1.csv",
        table1_md=report(
            "results/ablation/{model}/{task}/table1.md",
            caption="../report/ablation_table1.rst",
            category="Ablations",
            subcategory="{model} / {task}",
            labels={"table": "Table 1 analogue", "output": "Markdown"},
        ),
        table1_tex="results/ablation/{model}/{task}/table1.tex",
        png=report(
            "results/ablation/{model}/{task}/conditions.png",
            caption="../report/ablation_figure.rst",
            category="Ablations",
            subcategory="{model} / {task}",
            labels={"figure": "conditions", "output": "figure"},
        ),
        figure_csv="results/ablation/{model}/{task}/conditions_figure.csv",
        heads_png=report(
            "results/ablation/{model}/{task}/heads.png",
            caption="../report/ablation_heads.rst",
            category="Ablations",
            subcategory="{model} / {task}",
            labels={"figure": "heads per condition", "output": "figure"},
        ),
        heads_csv="results/ablation/{model}/{task}/heads.csv",
    log:
        "logs/ablation_table/{model}/{task}.log",
    benchmark:
        "benchmarks/out/ablation_table/{model}/{task}.tsv"
    conda:
        "../envs/analysis.yaml"
    params:
        conditions=ABLATION_CONDITIONS,
        protocols=lambda wildcards: {
            c: PROTOCOLS[c].as_dict() for c in ABLATION_CONDITIONS
        },
        reference=REFERENCE,
        head_maps=ablation_head_maps,
        pooling=lookup(dpath="analysis/table_pooling", within=config),
        bootstrap=lookup(dpath="analysis/bootstrap", within=config),
        vote_ties=lookup(dpath="analysis/vote_ties", within=config),
        aliases=lookup(dpath="analysis/paper_aliases", within=config),
    script:
        "../scripts/ablation_table.py"
