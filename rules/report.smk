# The summary page (results/summary/index.html): every report item of the run with its files, headline
# numbers and wall times. Included last, so that it can list the outputs of every other stage's rules.


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
    localrule: True
    conda:
        "../envs/analysis.yaml"
    params:
        entries=summary_entries,
        benchmarks="benchmarks/out",
    script:
        "../scripts/report_summary.py"
