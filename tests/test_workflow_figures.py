"""The whole workflow on a tiny local model, task and encoder: every figure and table, the report, and
changing a figure-only option (config `analysis:`) reruns figure/table jobs but no forward pass."""

import json
import re
import subprocess

import numpy as np
import pytest
from forward_fixtures import CONTENT, make_model_folder
from test_encoder_embed import tiny_encoder  # noqa: F401 (fixture)

UPSTREAM = {"forward_pass", "build_prompts", "prepare_task", "model_manifest", "encoder_manifest", "embed_prompt_texts"}
FIGURE_JOBS = {
    "fig2_attention_map",
    "fig25_single_prompt_map",
    "fig3_reconstruction",
    "fig4_simpred_correlation",
    "fig5_kv_probes",
}


def planned_jobs(result) -> dict:
    """Job name -> count from the 'Job stats' table of a dry run."""
    jobs = {}
    text = result.stdout + result.stderr
    block = text.split("Job stats:")[-1] if "Job stats:" in text else ""
    for line in block.splitlines():
        match = re.match(r"^([A-Za-z0-9_]+)\s+(\d+)$", line.strip())
        if match and match.group(1) != "total":
            jobs[match.group(1)] = int(match.group(2))
    return jobs


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory, tiny_encoder):  # noqa: F811
    root = tmp_path_factory.mktemp("tiny_workflow")
    model_dir = root / "model"
    make_model_folder(model_dir, "llama")
    data = root / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for split, n in [("train", 60), ("validation", 30)]:
        rows = [
            {"text": " ".join(rng.choice(CONTENT, int(rng.integers(2, 6)))), "label": int(rng.integers(0, 2))}
            for _ in range(n)
        ]
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    encoder_path = json.loads(tiny_encoder.read_text())["path"]
    config = {
        "run": {"models": ["tiny"], "tasks": ["toy"], "encoders": ["tiny-enc"]},
        "models": {"tiny": {"source": "local", "local": {"path": str(model_dir)}, "dtype": "float32", "device": "cpu"}},
        "tasks": {
            "toy": {
                "source": "local",
                "local": {"dir": str(data)},
                "eval_split": "validation",
                "demo_split": "train",
                "label_names": ["negative", "positive"],
                "verbalizers": [" negative", " positive"],
                "template": {"input_prefix": "Input: ", "output_prefix": " Output:", "delimiter": "\n"},
            }
        },
        "encoders": {"tiny-enc": {"source": "local", "local": {"path": encoder_path}}},
        "protocol": {"n_demos": 3, "n_select": 14, "n_heldout": 10},
        "capture": {"kv_prompts": 12, "batch_size": 4, "shard_size": 8},
        "theory": {"n_hmms": 2, "n_prompts": 4, "n_demos": [1, 2], "kernel": {"n_sigma": 200}},
        "analysis": {"bootstrap": {"n_boot": 50}},
    }
    return root, config


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
