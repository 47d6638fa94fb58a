"""The whole workflow on a tiny local model, task and encoder: every figure and table, the report, and
changing a figure-only option (config `analysis:`) reruns figure/table jobs but no forward pass."""

import json
import subprocess

from helpers import planned_jobs

UPSTREAM = {"forward_pass", "build_prompts", "prepare_task", "model_manifest", "encoder_manifest", "embed_prompt_texts"}
FIGURE_JOBS = {
    "fig2_attention_map",
    "fig25_single_prompt_map",
    "fig3_reconstruction",
    "fig4_simpred_correlation",
    "fig5_kv_probes",
}


def test_tiny_workflow_report_and_figure_only_reruns(run_workflow, tiny_setup):
    root, config = tiny_setup
    first = run_workflow(root, config, ["all"])
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    work = first.workdir
    figures = work / "results/figures/tiny/toy/paper"
    figure_names = ["fig2_attention_map", "fig25_single_prompt_map", "fig3a_reconstruction_vs_prediction"]
    figure_names += [
        "fig3b_reconstruction_vs_gold",
        "fig4_simpred_correlation",
        "fig5a_key_probes",
        "fig5b_value_probes",
    ]
    for name in figure_names:
        assert (figures / f"{name}.png").stat().st_size > 5000, name
    for csv in [
        "fig2_attention_map",
        "fig25_single_prompt_map",
        "fig3_reconstruction",
        "fig4_simpred_correlation",
        "fig5_kv_probes",
    ]:
        assert len((figures / f"{csv}.csv").read_text().splitlines()) > 2, csv
    table = (work / "results/tables/tiny/paper/table2.md").read_text()
    assert "ICL accuracy" in table and "tiny-enc KR, raw cosine" in table
    summary = (work / "results/summary/summary.md").read_text()
    for rule in ["fig2_attention_map", "fig3_reconstruction", "table2", "theory_table3_tables"]:
        assert f"`{rule}`" in summary
    assert "`forward_pass`" in summary  # wall time per rule from the benchmark files

    report = run_workflow(root, config, ["--report", "results/report.html"])
    assert report.returncode == 0, report.stdout[-3000:] + report.stderr[-3000:]
    html = (work / "results/report.html").read_text(errors="replace")
    for name in [
        "fig2_attention_map.png",
        "fig3a_reconstruction_vs_prediction.png",
        "fig5b_value_probes.png",
        "table2.md",
        "index.html",
    ]:
        assert name in html, name

    unchanged = run_workflow(root, config, ["all", "-n"])
    assert unchanged.returncode == 0 and planned_jobs(unchanged) == {}, unchanged.stdout[-3000:]

    figure_only = json.loads(json.dumps(config))
    figure_only["analysis"].update(rescale_len=12, correlation_unit="per_prompt", probe_alpha=0.1, single_prompt=3)
    figure_only["analysis"]["bootstrap"]["n_boot"] = 60
    dry = run_workflow(root, figure_only, ["all", "-n"])
    jobs = planned_jobs(dry)
    assert dry.returncode == 0, dry.stdout[-3000:] + dry.stderr[-3000:]
    assert {
        "fig2_attention_map",
        "fig25_single_prompt_map",
        "fig4_simpred_correlation",
        "fig5_kv_probes",
        "table2",
    } <= set(jobs), jobs
    assert not UPSTREAM & set(jobs), jobs

    # the check can fail: a capture option does rerun the forward pass (and everything after it)
    capture_change = json.loads(json.dumps(config))
    capture_change["capture"]["kv_prompts"] = 6
    jobs = planned_jobs(run_workflow(root, capture_change, ["all", "-n"]))
    assert "forward_pass" in jobs and set(jobs) >= FIGURE_JOBS, jobs


def test_planned_jobs_parser():
    result = subprocess.CompletedProcess(
        [], 0, "Job stats:\njob      count\n-----  ---\nfig2_attention_map   1\ntable2 1\ntotal 2\n", ""
    )
    assert planned_jobs(result) == {"fig2_attention_map": 1, "table2": 1}
