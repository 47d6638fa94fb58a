# Paper figures from the forward store results/forward/{model}/{task}/{condition}.zarr: Fig 2 (averaged attention map),
# Fig 25 (one prompt's map), Fig 3a/3b (reconstruction heat-maps), Fig 4 (correlation with sim_pred) and
# Fig 5a/5b (key/value probes), for every selected model and task (the paper's appendix set). Every figure
# writes the CSV of the numbers it shows. Options come from config `analysis:` only, so changing them
# reruns these rules and never a forward pass.


rule fig2_attention_map:
    input:
        store=FORWARD_STORE,
    output:
        png=cell_report(
            f"{FIGURE_DIR}/fig2_attention_map.png",
            "fig2_attention_map.rst",
            {"figure": "Fig 2", "output": "attention map"},
        ),
        csv=cell_report(
            f"{FIGURE_DIR}/fig2_attention_map.csv",
            "figure_csv.rst",
            {"figure": "Fig 2", "output": "data (CSV)"},
        ),
    log:
        "logs/fig2_attention_map/{model}/{task}/{condition}.log",
    benchmark:
        "benchmarks/out/fig2_attention_map/{model}/{task}/{condition}.tsv"
    conda:
        "../envs/analysis.yaml"
    params:
        rescale_len=lookup(dpath="analysis/rescale_len", within=config),
        rescale_mode=lookup(dpath="analysis/rescale_mode", within=config),
        splits=lookup(dpath="analysis/figure_splits", within=config),
        color_scale=lookup(dpath="analysis/attention_color_scale", within=config),
        vmax_quantile=lookup(dpath="analysis/attention_vmax_quantile", within=config),
        batch_size=lookup(dpath="analysis/batch_size", within=config),
    script:
        "../scripts/fig2_attention_map.py"


rule fig25_single_prompt_map:
    input:
        store=FORWARD_STORE,
    output:
        png=cell_report(
            f"{FIGURE_DIR}/fig25_single_prompt_map.png",
            "fig25_single_prompt_map.rst",
            {"figure": "Fig 25", "output": "single-prompt map"},
        ),
        csv=cell_report(
            f"{FIGURE_DIR}/fig25_single_prompt_map.csv",
            "figure_csv.rst",
            {"figure": "Fig 25", "output": "data (CSV)"},
        ),
    log:
        "logs/fig25_single_prompt_map/{model}/{task}/{condition}.log",
    benchmark:
        "benchmarks/out/fig25_single_prompt_map/{model}/{task}/{condition}.tsv"
    conda:
        "../envs/analysis.yaml"
    params:
        prompt=lookup(dpath="analysis/single_prompt", within=config),
        rescale_len=single_prompt_rescale_len,
        rescale_mode=lookup(dpath="analysis/rescale_mode", within=config),
        color_scale=lookup(dpath="analysis/attention_color_scale", within=config),
        vmax_quantile=lookup(dpath="analysis/attention_vmax_quantile", within=config),
    script:
        "../scripts/fig25_single_prompt_map.py"


rule fig3_reconstruction:
    input:
        store=FORWARD_STORE,
    output:
        png_pred=cell_report(
            f"{FIGURE_DIR}/fig3a_reconstruction_vs_prediction.png",
            "fig3a_reconstruction.rst",
            {"figure": "Fig 3a", "output": "ỹ vs ŷ"},
        ),
        png_gold=cell_report(
            f"{FIGURE_DIR}/fig3b_reconstruction_vs_gold.png",
            "fig3b_reconstruction.rst",
            {"figure": "Fig 3b", "output": "ỹ vs gold"},
        ),
        csv=cell_report(
            f"{FIGURE_DIR}/fig3_reconstruction.csv",
            "figure_csv.rst",
            {"figure": "Fig 3a/3b", "output": "data (CSV)"},
        ),
    log:
        "logs/fig3_reconstruction/{model}/{task}/{condition}.log",
    benchmark:
        "benchmarks/out/fig3_reconstruction/{model}/{task}/{condition}.tsv"
    conda:
        "../envs/analysis.yaml"
    params:
        poolings=lookup(dpath="analysis/poolings", within=config),
        splits=lookup(dpath="analysis/figure_splits", within=config),
        batch_size=lookup(dpath="analysis/batch_size", within=config),
        n_permutations=lookup(dpath="analysis/n_permutations", within=config),
        permutation_seed=lookup(dpath="analysis/permutation_seed", within=config),
        null_quantile=lookup(dpath="analysis/null_quantile", within=config),
        vote_ties=lookup(dpath="analysis/vote_ties", within=config),
        color_center=lookup(dpath="analysis/reconstruction_color_center", within=config),
    script:
        "../scripts/fig3_reconstruction.py"


rule fig4_simpred_correlation:
    input:
        store=FORWARD_STORE,
    output:
        png=cell_report(
            f"{FIGURE_DIR}/fig4_simpred_correlation.png",
            "fig4_simpred_correlation.rst",
            {"figure": "Fig 4", "output": "correlation heat-map"},
        ),
        csv=cell_report(
            f"{FIGURE_DIR}/fig4_simpred_correlation.csv",
            "figure_csv.rst",
            {"figure": "Fig 4", "output": "data (CSV)"},
        ),
    log:
        "logs/fig4_simpred_correlation/{model}/{task}/{condition}.log",
    benchmark:
        "benchmarks/out/fig4_simpred_correlation/{model}/{task}/{condition}.tsv"
    conda:
        "../envs/analysis.yaml"
    params:
        poolings=lookup(dpath="analysis/poolings", within=config),
        splits=lookup(dpath="analysis/figure_splits", within=config),
        correlation_unit=lookup(dpath="analysis/correlation_unit", within=config),
        n_permutations=lookup(dpath="analysis/correlation_permutations", within=config),
        n_boot=lookup(dpath="analysis/correlation_bootstrap", within=config),
        level=lookup(dpath="analysis/correlation_level", within=config),
        seed=lookup(dpath="analysis/correlation_seed", within=config),
        batch_size=lookup(dpath="analysis/batch_size", within=config),
    script:
        "../scripts/fig4_simpred_correlation.py"


rule fig5_kv_probes:
    input:
        store=FORWARD_STORE,
    output:
        png_keys=cell_report(
            f"{FIGURE_DIR}/fig5a_key_probes.png",
            "fig5a_key_probes.rst",
            {"figure": "Fig 5a", "output": "key probes"},
        ),
        png_values=cell_report(
            f"{FIGURE_DIR}/fig5b_value_probes.png",
            "fig5b_value_probes.rst",
            {"figure": "Fig 5b", "output": "value probes"},
        ),
        csv=cell_report(
            f"{FIGURE_DIR}/fig5_kv_probes.csv",
            "figure_csv.rst",
            {"figure": "Fig 5a/5b", "output": "data (CSV)"},
        ),
    log:
        "logs/fig5_kv_probes/{model}/{task}/{condition}.log",
    benchmark:
        "benchmarks/out/fig5_kv_probes/{model}/{task}/{condition}.tsv"
    conda:
        "../envs/analysis.yaml"
    params:
        alpha=lookup(dpath="analysis/probe_alpha", within=config),
        test_fraction=lookup(dpath="analysis/probe_test_fraction", within=config),
        seed=lookup(dpath="analysis/probe_seed", within=config),
        n_null=lookup(dpath="analysis/probe_null_shuffles", within=config),
        key_variable=lookup(dpath="analysis/probe_keys", within=config),
    script:
        "../scripts/fig5_kv_probes.py"
