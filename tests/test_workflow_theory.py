"""End to end: the Table 3 rules on a tiny config in a temporary copy of the workflow, and bad configs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from helpers import workflow_config

TINY = workflow_config("theory_tiny")
TARGETS = [
    "results/theory/table3.csv",
    "results/theory/table3.md",
    "results/theory/table3.html",
    "results/theory/table3.png",
    "results/theory/table3_figure.csv",
]


def test_theory_stage_end_to_end(run_workflow, tmp_path):
    result = run_workflow(tmp_path, TINY, TARGETS)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.workdir / "results" / "theory"

    summary = pd.read_csv(out / "table3.csv")
    expected_columns = {"method", "n", "n_hmms", "n_prompts"} | {
        f"{metric}_{stat}" for metric in ("l1", "l2", "acc_posterior", "acc_sampled") for stat in ("mean", "sd")
    }
    assert set(summary.columns) == expected_columns
    assert set(summary["method"]) == {"kernel_regression", "nadaraya_watson", "nw_linear", "label_frequency", "oracle"}
    assert (summary["n_hmms"] == 4).all() and (summary["n_prompts"] == 40).all()
    kr = summary[summary["method"] == "kernel_regression"].set_index("n").sort_index()
    assert kr.index.tolist() == [1, 2, 4, 8, 16, 32, 64, 128]
    accuracy, distance = kr["acc_posterior_mean"].to_numpy(), kr["l1_mean"].to_numpy()
    # the trend of Table 3: accuracy rises and distance falls with n (small noise allowed step to step)
    assert np.all(np.diff(accuracy) > -0.05) and accuracy[-1] - accuracy[0] > 0.4
    assert np.all(np.diff(distance) < 0.05) and distance[0] > 1.0 and distance[-1] < 0.2
    assert (kr["acc_posterior_sd"] >= 0).all()
    label_frequency = summary[summary["method"] == "label_frequency"].set_index("n")
    assert label_frequency.loc[128, "l1_mean"] > 1.0  # ignores x: never converges to the posterior

    per_hmm = pd.read_csv(out / "table3_per_hmm.csv")
    assert sorted(per_hmm["hmm"].unique()) == [0, 1, 2, 3]

    markdown = (out / "table3.md").read_text()
    assert "| paper distance | 1.322 | 0.942 | 0.519 | 0.218 | 0.163 | 0.085 | 0.093 | 0.083 |" in markdown
    assert "| paper accuracy | 0.337 | 0.532 | 0.745 | 0.901 | 0.926 | 0.968 | 0.961 | 0.964 |" in markdown
    assert f"| ours distance (L1) | {kr.loc[1, 'l1_mean']:.3f} ± {kr.loc[1, 'l1_sd']:.3f} |" in markdown
    assert "4 random HMMs" in markdown and "40 ICL prompts" in markdown
    assert "<table" in (out / "table3.html").read_text()

    figure_data = pd.read_csv(out / "table3_figure.csv")
    assert list(figure_data.columns) == ["panel", "series", "n", "value", "sd"]
    ours = figure_data[(figure_data["series"] == "kernel_regression") & (figure_data["panel"] == "accuracy")]
    np.testing.assert_allclose(ours.sort_values("n")["value"], accuracy, rtol=1e-8)
    assert len(figure_data[figure_data["series"] == "paper"]) == 16

    import matplotlib.image

    png = out / "table3.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(png)
    assert image.shape[0] > 200 and image.shape[1] > 400 and image.std() > 0.05  # not blank

    for log in ("theory_table3", "theory_table3_tables", "theory_table3_figure"):
        assert (result.workdir / "logs" / f"{log}.log").exists()
    assert "Table 3 done" in (result.workdir / "logs" / "theory_table3.log").read_text()
    assert (result.workdir / "benchmarks" / "out" / "theory_table3.tsv").exists()

    # the report renders the captions (they template config values) and includes the figure and table
    report = run_workflow(tmp_path, TINY, TARGETS, extra_args=("--report", "report.zip"))
    assert report.returncode == 0, report.stdout + report.stderr
    import zipfile

    with zipfile.ZipFile(result.workdir / "report.zip") as archive:
        names = archive.namelist()
    assert any(name.endswith("table3.png") for name in names) and any(name.endswith("table3.html") for name in names)


@pytest.mark.parametrize(
    ("theory", "message"),
    [
        ({"n_hmms": -1}, "config key theory.n_hmms: -1 is less than the minimum of 1"),
        ({"n_hmm": 3}, "config key theory.n_hmm: unknown key"),
        ({"kernel": {"n_sigma": "many"}}, "config key theory.kernel.n_sigma: 'many' is not of type 'integer'"),
    ],
)
def test_invalid_config_stops_before_any_job_naming_the_key(run_workflow, tmp_path, theory, message):
    dry = run_workflow(tmp_path, {"theory": theory}, ["results/theory/table3.csv"], extra_args=("-n",))
    assert dry.returncode != 0
    assert message in dry.stdout + dry.stderr
    real = run_workflow(tmp_path, {"theory": theory}, ["results/theory/table3.csv"])
    assert real.returncode != 0 and message in real.stdout + real.stderr
    assert not (real.workdir / "results" / "theory").exists() and not (real.workdir / "logs").exists()
