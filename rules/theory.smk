# Table 3: kernel regression (Theorem 1, Eq. 6) against the exact Bayesian posterior on random
# mixture-of-HMM tasks. One job runs the whole experiment (about 10 s on one core); two cheap jobs
# render its summary as tables and as a figure.


rule theory_table3:
    output:
        table="results/theory/table3.csv",
        per_hmm="results/theory/table3_per_hmm.csv",
    log:
        "logs/theory_table3.log",
    benchmark:
        "benchmarks/out/theory_table3.tsv"
    conda:
        "../envs/theory.yaml"
    threads: 1
    params:
        theory=lookup(dpath="theory", within=config),
    script:
        "../scripts/theory_table3.py"


rule theory_table3_tables:
    input:
        table=rules.theory_table3.output.table,
    output:
        markdown="results/theory/table3.md",
        html=report(
            "results/theory/table3.html",
            caption="../report/theory_table3.rst",
            category="Theory",
            subcategory="Table 3",
            labels={"output": "table"},
        ),
    log:
        "logs/theory_table3_tables.log",
    localrule: True
    conda:
        "../envs/theory.yaml"
    script:
        "../scripts/theory_table3_tables.py"


rule theory_table3_figure:
    input:
        table=rules.theory_table3.output.table,
    output:
        figure=report(
            "results/theory/table3.png",
            caption="../report/theory_table3_figure.rst",
            category="Theory",
            subcategory="Table 3",
            labels={"output": "figure"},
        ),
        data=report(
            "results/theory/table3_figure.csv",
            caption="../report/theory_table3_figure_data.rst",
            category="Theory",
            subcategory="Table 3",
            labels={"output": "figure data (CSV)"},
        ),
    log:
        "logs/theory_table3_figure.log",
    conda:
        "../envs/theory.yaml"
    script:
        "../scripts/theory_table3_figure.py"
