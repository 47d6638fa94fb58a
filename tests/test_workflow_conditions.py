"""Experimental conditions as a dimension of the DAG: the catalog, its checks, condition paths, and that editing
one condition reruns only that condition's jobs and leaves the other conditions' stores untouched."""

import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers import REPO, merge_configs, planned_jobs, workflow_config

from kicl.conditions import PAIRING_KEYS, condition_errors, condition_protocol, condition_tasks, partner_problems
from kicl.config import config_errors


def _config(**extra) -> dict:
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config.update(extra)
    return config


def test_condition_protocol_merges_overrides_on_the_protocol():
    config = _config(conditions={"paper": {}, "near4": {"demo_strategy": "nearest", "n_demos": 4}})
    near = condition_protocol(config, "near4")
    assert near["demo_strategy"] == "nearest" and near["n_demos"] == 4
    assert near["seed"] == config["protocol"]["seed"] and near["n_heldout"] == config["protocol"]["n_heldout"]
    assert condition_protocol(config, "paper") == config["protocol"]
    assert config["protocol"]["demo_strategy"] == "random"  # the protocol itself is not changed
    with pytest.raises(KeyError, match="'nope' is not in the conditions catalog"):
        condition_protocol(config, "nope")


def test_condition_errors_name_the_condition_key():
    config = _config(
        conditions={
            "paper": {},
            "bad": {"seed": 1, "n_heldout": 5, "demo_strategy": "nearst", "frobnicate": 2},
            "good": {"n_demos": 2},
        }
    )
    problems = condition_errors(config)
    assert any(
        p.startswith("config key conditions.bad.seed: a condition cannot change the test points") for p in problems
    )
    assert any(p.startswith("config key conditions.bad.n_heldout: a condition cannot") for p in problems)
    assert any(p.startswith("config key conditions.bad.frobnicate: not a protocol key") for p in problems)
    assert any(p.startswith("config key conditions.bad.demo_strategy: 'nearst' is not one of") for p in problems)
    assert not [p for p in problems if "conditions.good" in p or "conditions.paper" in p]
    assert set(PAIRING_KEYS) == {"seed", "n_select", "n_heldout"}
    assert condition_errors(config, names=["good"]) == []


def test_condition_tasks_reference_everywhere_others_on_conditions_stage_tasks():
    config = _config()
    config["run"] = {**config["run"], "tasks": ["a", "b"], "conditions": ["paper", "near"]}
    config["conditions_stage"] = {"reference": "paper", "tasks": ["b", "not_run"]}
    assert condition_tasks(config) == {"paper": ["a", "b"], "near": ["b"]}


def test_the_decision_partner_runs_on_every_task_and_must_only_flip_labels():
    config = _config()
    config["run"] = {**config["run"], "tasks": ["a", "b"], "conditions": ["paper", "near"]}
    config["conditions_stage"] = {"reference": "paper", "tasks": ["b"]}
    config["analysis"] = {"decision": {"partner": "flipped_labels"}}
    assert condition_tasks(config) == {"paper": ["a", "b"], "near": ["b"], "flipped_labels": ["a", "b"]}
    paper = {"labels": "gold", "n_demos": 8}
    assert partner_problems({"paper": paper, "f": {"labels": "flipped", "n_demos": 8}}, "paper", "f") == []
    [problem] = partner_problems({"paper": paper, "f": {"labels": "flipped", "n_demos": 4}}, "paper", "f")
    assert problem.startswith("analysis.decision.partner: condition 'f' must be the reference") and "n_demos" in problem


def test_the_old_ablation_section_names_its_new_key():
    """The conditions stage's section was ablation:; a config that still has it is told where it went."""
    config = _config(ablation={"reference": "paper", "tasks": []})
    problems = config_errors(config, REPO / "schemas" / "config.schema.yaml")
    [line] = [p for p in problems if p.startswith("config key ablation:")]
    assert line.startswith("config key ablation: renamed: it is now conditions_stage: (allowed here:"), problems


def test_bad_conditions_stop_the_dry_run_naming_the_key(run_workflow, tmp_path):
    overrides = {
        "run": {"conditions": ["paper", "missing", "x"]},
        "conditions": {"x": {"n_select": 3, "demo_strategy": "nearst"}},
        "conditions_stage": {"tasks": ["no_such_task"]},
    }
    result = run_workflow(tmp_path, overrides, ["-n"])
    text = result.stdout + result.stderr
    assert result.returncode != 0
    for line in [
        "run.conditions: 'missing' is not in the conditions catalog",
        "conditions_stage.tasks: 'no_such_task' is not in the tasks catalog",
        "config key conditions.x.n_select: a condition cannot change the test points",
        "config key conditions.x.demo_strategy: 'nearst' is not one of",
    ]:
        assert line in text, text[-3000:]
    assert not (result.workdir / "results").exists()


def test_a_partner_that_is_not_a_label_flip_stops_the_dry_run(run_workflow, tmp_path):
    result = run_workflow(tmp_path, {"analysis": {"decision": {"partner": "half_wrong_labels"}}}, ["-n"])
    assert result.returncode != 0
    expected = "analysis.decision.partner: condition 'half_wrong_labels' must be the reference 'paper' with every"
    assert expected in result.stdout + result.stderr


def _tree_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def test_editing_one_condition_reruns_only_its_jobs(run_workflow, tiny_setup):
    root, base = tiny_setup
    config = merge_configs(base, workflow_config("tiny_conditions"))
    stores = {c: f"results/forward/tiny/toy/{c}.zarr" for c in ["paper", "two", "one"]}
    tables = [f"results/tables/tiny/{c}/table2.csv" for c in ["paper", "two", "one"]]
    first = run_workflow(root, config, [*stores.values(), *tables])
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    work = first.workdir
    for condition, n_demos in [("paper", 3), ("two", 2), ("one", 1)]:
        records = (work / f"results/prompts/tiny/toy/{condition}/prompts.jsonl").read_text().splitlines()
        assert {len(json.loads(line)["demos"]) for line in records} == {n_demos}
    test_points = {
        c: [json.loads(line)["test_index"] for line in (work / f"results/prompts/tiny/toy/{c}/prompts.jsonl").open()]
        for c in stores
    }
    assert test_points["paper"] == test_points["two"] == test_points["one"]  # paired by construction
    before = {c: _tree_digest(work / path) for c, path in stores.items()}

    edited = json.loads(json.dumps(config))
    edited["conditions"]["two"] = {"n_demos": 2, "demo_strategy": "class_balanced"}
    dry = run_workflow(root, edited, [*stores.values(), *tables, "-n", "--printshellcmds"])
    assert dry.returncode == 0, dry.stdout[-3000:] + dry.stderr[-3000:]
    jobs = planned_jobs(dry)
    assert jobs.get("build_prompts") == 1 and jobs.get("forward_pass") == 1 and jobs.get("table2") == 1, jobs
    outputs = [line.strip() for line in (dry.stdout + dry.stderr).splitlines() if line.strip().startswith("output:")]
    assert "output: results/forward/tiny/toy/two.zarr" in outputs, outputs
    assert not [line for line in outputs if "/paper" in line or "/one" in line], outputs

    second = run_workflow(root, edited, [*stores.values(), *tables])
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-4000:]
    after = {c: _tree_digest(work / path) for c, path in stores.items()}
    assert after["paper"] == before["paper"] and after["one"] == before["one"]
    assert after["two"] != before["two"]
    meta = json.loads((work / "results/prompts/tiny/toy/two/meta.json").read_text())
    assert meta["strategy"] == "class_balanced"


def test_the_conditions_stage_renders_tables_and_figures_from_its_numbers(run_workflow, tiny_setup, tmp_path):
    """conditions_numbers writes the CSVs under results/conditions/; conditions_tables and conditions_figures
    render them alone, so a deleted table or figure is made again without rerunning the numbers."""
    root, base = tiny_setup
    config = json.loads(json.dumps(base))
    config["run"]["conditions"] = ["paper", "two"]
    config["conditions"] = {"two": {"n_demos": 2}}
    config["conditions_stage"] = {"reference": "paper", "tasks": ["toy"], "head_maps": []}
    folder = "results/conditions/tiny/toy"
    names = ["conditions.csv", "order_groups.csv", "table1.csv", "heads.csv", "conditions_figure.csv"]
    names += ["conditions.md", "conditions.tex", "table1.md", "table1.tex", "conditions.png", "heads.png"]
    targets = [f"{folder}/{name}" for name in names]
    first = run_workflow(tmp_path, config, targets)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    work = first.workdir
    table = pd.read_csv(work / folder / "conditions.csv")
    assert table["condition"].tolist() == ["paper", "two", "flipped_labels"]  # + the decision rule's partner
    assert table["head_ref"].str.fullmatch(r"L\d+H\d+").all(), table["head_ref"].tolist()
    assert "two − paper" in (work / folder / "conditions.md").read_text()
    for name in ("conditions.md", "heads.png"):
        (work / folder / name).unlink()
    dry = run_workflow(tmp_path, config, [*targets, "-n"])
    assert dry.returncode == 0, dry.stdout[-3000:] + dry.stderr[-3000:]
    assert planned_jobs(dry) == {"conditions_tables": 1, "conditions_figures": 1}, planned_jobs(dry)
