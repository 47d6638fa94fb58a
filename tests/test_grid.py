"""The run grid (kicl.workflow.grid): every (model, task, condition) cell computed once from the config."""

from helpers import default_config

from kicl.workflow.grid import RunGrid, expand_cells


def _config(**sections) -> dict:
    config = default_config()
    config["run"] = {**config["run"], "models": ["m1", "m2"], "tasks": ["a", "b"], "conditions": ["paper", "near"]}
    config["conditions"] = {"paper": {}, "near": {"demo_strategy": "nearest"}, "flipped_labels": {"labels": "flipped"}}
    config["conditions_stage"] = {**config["conditions_stage"], "reference": "paper", "tasks": ["b", "not_run"]}
    config["theory_icl"] = {**config["theory_icl"], "enabled": True}
    config["theory_icl"]["chain"] = {**config["theory_icl"]["chain"], "model": "world_model", "task": "world"}
    config["causal"] = {**config["causal"], "tasks": ["a", "elsewhere"]}
    config.update(sections)
    return config


def test_the_grid_holds_every_condition_on_its_tasks_and_the_theory_icl_cell():
    run = RunGrid.from_config(_config())
    assert run.conditions == ("paper", "near", "flipped_labels")  # the decision rule's partner joins
    # the reference and the partner on every run task, the other conditions on the stage's tasks that run
    assert {(t, c) for _, t, c in run.cells} == {
        ("a", "paper"), ("b", "paper"), ("b", "near"), ("a", "flipped_labels"), ("b", "flipped_labels")
    }  # fmt: skip
    assert len(run.cells) == 10 and {m for m, _, _ in run.cells} == {"m1", "m2"}
    assert run.pair == (("world_model", "world", "paper"),)
    assert run.tasks("m1", "near") == ["b"] and run.tasks("world_model", "paper") == ["world"]
    assert run.names(0) == ["m1", "m2", "world_model"]
    assert run.stage_tasks == ("b",) and run.causal_tasks == ("a",)
    assert {cell[2] for cell in run.reference_cells} == {"paper"} and len(run.reference_cells) == 4


def test_without_theory_icl_or_a_second_condition_the_extra_cells_go():
    config = _config()
    config["theory_icl"]["enabled"] = False
    config["run"]["conditions"] = ["paper"]
    config["analysis"] = {**config["analysis"], "decision": {**config["analysis"]["decision"], "partner": None}}
    run = RunGrid.from_config(config)
    assert run.pair == () and run.tasks("world_model", "paper") == []
    assert run.stage_conditions == ("paper",) and run.stage_tasks == ()  # nothing to compare with


def test_expand_cells_fills_each_cell_and_each_encoder_where_the_pattern_names_one():
    cells = [("m", "a", "paper"), ("m", "b", "paper")]
    files = expand_cells(
        ["r/{model}/{task}/{condition}.zarr", "kr/{encoder}/{task}.csv", "t/{model}.csv"], cells, ["e1"]
    )
    assert files == ["r/m/a/paper.zarr", "kr/e1/a.csv", "t/m.csv", "r/m/b/paper.zarr", "kr/e1/b.csv"]
    assert expand_cells("kr/{encoder}/{task}.csv", cells) == []  # no encoder selected: no encoder rows
