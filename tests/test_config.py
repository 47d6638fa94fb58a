"""Config problems stop the dry run before any job, one line each naming the config key (rules/common.smk)."""

from __future__ import annotations

import pytest
from helpers import default_config

from kicl.config import CATALOG_SOURCES, catalog_errors

# each case: config overrides -> a line the dry run must print
DRY_RUN_CASES = {
    "model source hub without a hub section": (
        {"models": {"smollm2-135m": {"source": "hub"}}},
        "config key models.smollm2-135m.hub: missing; models.smollm2-135m.source is 'hub'",
    ),
    "no test points": (
        {"protocol": {"n_select": 0, "n_heldout": 0}},
        "config keys protocol.n_select + protocol.n_heldout: 0 test points",
    ),
    "task source local without a local section": (
        {"tasks": {"movie_snippets": {"source": "local"}}},
        "config key tasks.movie_snippets.local: missing; tasks.movie_snippets.source is 'local'",
    ),
    "local model folder that does not exist": (
        {"models": {"smollm2-135m": {"source": "local", "local": {"path": "/no/such/model"}}}},
        "config key models.smollm2-135m.local.path: '/no/such/model' does not exist",
    ),
    "retrieval encoder source hub without a hub section": (
        {"protocol": {"demo_strategy": "nearest"}, "encoders": {"all-minilm-l6-v2": {"source": "hub"}}},
        "config key encoders.all-minilm-l6-v2.hub: missing",
    ),
}


@pytest.mark.parametrize("case", sorted(DRY_RUN_CASES))
def test_config_problem_stops_the_dry_run_naming_the_key(case, run_workflow, tmp_path):
    overrides, message = DRY_RUN_CASES[case]
    result = run_workflow(tmp_path, overrides, ["-n"])
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "invalid configuration" in output and message in output, output
    assert "Traceback" not in output and "KeyError" not in output, output


def test_the_default_config_has_no_catalog_problem():
    assert catalog_errors(default_config()) == []


@pytest.mark.parametrize("kind", sorted(CATALOG_SOURCES))
def test_every_source_of_every_catalog_needs_its_section(kind):
    config = default_config()
    for source in CATALOG_SOURCES[kind]:
        config[kind]["x"] = {"source": source}
        problems = catalog_errors(config, {kind: ["x"]})
        assert problems == [problems[0]] and problems[0].startswith(f"config key {kind}.x.{source}: missing"), problems
        config[kind]["x"][source] = {"path": ".", "dir": "."}
        assert catalog_errors(config, {kind: ["x"]}) == []


def test_local_folders_the_workflow_makes_are_not_required_before_the_run():
    config = default_config()
    config["models"]["trained"] = {"source": "local", "local": {"path": "results/theory_icl/model"}}
    config["models"]["elsewhere"] = {"source": "local", "local": {"path": "/no/such/folder"}}
    assert catalog_errors(config, {"models": ["trained", "elsewhere"]}) == [
        "config key models.elsewhere.local.path: '/no/such/folder' does not exist"
    ]


def test_only_the_entries_in_use_are_checked():
    config = default_config()
    config["models"]["unused"] = {"source": "hub"}
    assert catalog_errors(config, {"models": []}) == []
    assert len(catalog_errors(config)) == 1
