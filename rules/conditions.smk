# The conditions stage: per (model, task), every selected condition (config conditions:, run.conditions) side by
# side, paired on the shared test points: ICL accuracy and its paired difference to the reference condition,
# the ŷ-change rate, order-permutation groups, the selected head's held-out agreement (head chosen on the
# reference and re-selected within each condition) beside the attention-free baselines and encoder kernel
# regression, a bandwidth curve, a label-noise curve and a Table 1 analogue (out-of-distribution test inputs).
# conditions_numbers does the analysis and writes the CSVs; two cheap jobs render them as tables and figures.


rule conditions_numbers:
    input:
        unpack(conditions_inputs),
    output:
        csv=conditions_report(
            "conditions.csv",
            "conditions_table.rst",
            {"table": "conditions", "output": "CSV"},
        ),
        order_csv=f"{CONDITIONS_DIR}/order_groups.csv",
        table1_csv=f"{CONDITIONS_DIR}/table1.csv",
        heads_csv=f"{CONDITIONS_DIR}/heads.csv",
        figure_csv=f"{CONDITIONS_DIR}/conditions_figure.csv",
    log:
        "logs/conditions_numbers/{model}/{task}.log",
    benchmark:
        "benchmarks/out/conditions_numbers/{model}/{task}.tsv"
    conda:
        "../envs/analysis.yaml"
    params:
        conditions=CONDITIONS_STAGE_CONDITIONS,
        protocols=lambda wildcards: {
            c: PROTOCOLS[c].as_dict() for c in CONDITIONS_STAGE_CONDITIONS
        },
        reference=REFERENCE,
        head_maps=conditions_head_maps,
        pooling=lookup(dpath="analysis/table_pooling", within=config),
        bootstrap=lookup(dpath="analysis/bootstrap", within=config),
        vote_ties=lookup(dpath="analysis/vote_ties", within=config),
        aliases=lookup(dpath="analysis/paper_aliases", within=config),
    script:
        "../scripts/conditions_numbers.py"


rule conditions_tables:
    input:
        csv=rules.conditions_numbers.output.csv,
        order_csv=rules.conditions_numbers.output.order_csv,
        table1_csv=rules.conditions_numbers.output.table1_csv,
    output:
        md=conditions_report(
            "conditions.md",
            "conditions_table.rst",
            {"table": "conditions", "output": "Markdown"},
        ),
        tex=f"{CONDITIONS_DIR}/conditions.tex",
        table1_md=conditions_report(
            "table1.md",
            "conditions_table1.rst",
            {"table": "Table 1 analogue", "output": "Markdown"},
        ),
        table1_tex=f"{CONDITIONS_DIR}/table1.tex",
    log:
        "logs/conditions_tables/{model}/{task}.log",
    localrule: True
    conda:
        "../envs/analysis.yaml"
    params:
        protocols=lambda wildcards: {
            c: PROTOCOLS[c].as_dict() for c in CONDITIONS_STAGE_CONDITIONS
        },
        reference=REFERENCE,
        pooling=lookup(dpath="analysis/table_pooling", within=config),
        bootstrap=lookup(dpath="analysis/bootstrap", within=config),
    script:
        "../scripts/conditions_tables.py"


rule conditions_figures:
    input:
        csv=rules.conditions_numbers.output.csv,
        heads_csv=rules.conditions_numbers.output.heads_csv,
        figure_csv=rules.conditions_numbers.output.figure_csv,
    output:
        png=conditions_report(
            "conditions.png",
            "conditions_figure.rst",
            {"figure": "conditions", "output": "figure"},
        ),
        heads_png=conditions_report(
            "heads.png",
            "conditions_heads.rst",
            {"figure": "heads per condition", "output": "figure"},
        ),
    log:
        "logs/conditions_figures/{model}/{task}.log",
    conda:
        "../envs/analysis.yaml"
    params:
        reference=REFERENCE,
        head_maps=conditions_head_maps,
        pooling=lookup(dpath="analysis/table_pooling", within=config),
        bootstrap=lookup(dpath="analysis/bootstrap", within=config),
    script:
        "../scripts/conditions_figures.py"
