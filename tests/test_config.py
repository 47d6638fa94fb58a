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


def _raw_config() -> dict:
    """config.yaml as written (no schema defaults filled in): what rules/common.smk checks."""
    import yaml
    from helpers import REPO

    return yaml.safe_load((REPO / "config.yaml").read_text())


def test_workflow_errors_return_every_problem_at_once_without_snakemake():
    from kicl.workflow.checks import workflow_errors

    assert workflow_errors(_raw_config()) == []
    config = _raw_config()
    config["run"]["models"] = ["no_such_model"]  # a catalog name
    config["causal"]["tasks"] = ["no_such_task"]  # a causal task
    config["conditions"]["sorted_seeded"] = {"order_seed": 1, "demo_order": "ascending"}  # a cross-field check
    config["run"]["conditions"] = [*config["run"]["conditions"], "sorted_seeded"]
    problems = workflow_errors(config)
    assert len(problems) == 3, problems
    assert problems[0].startswith("condition 'sorted_seeded': protocol.order_seed 1 permutes the native order")
    assert problems[1].startswith("run.models: 'no_such_model' is not in the models catalog")
    assert problems[2].startswith("causal.tasks: ['no_such_task'] are not in the tasks catalog")


def test_workflow_errors_report_schema_problems_alone():
    from kicl.workflow.checks import workflow_errors

    config = _raw_config()
    config["protocol"]["n_demos"] = -1
    config["causal"]["tasks"] = ["no_such_task"]  # not reached: the later checks need a valid config
    assert workflow_errors(config) == ["config key protocol.n_demos: -1 is less than the minimum of 0"]


def _schema_enum(path: str) -> list:
    """The enum at a dotted schema path; ``*`` is any catalog entry, ``[]`` an array's items."""
    from kicl.config import load_schema

    node = load_schema()
    for part in path.split("."):
        node = node["items"] if part == "[]" else node["additionalProperties" if part == "*" else "properties"]
        node = node if part in ("[]", "*") else node[part]
    return list(node["enum"])


#: (module, name of its enumeration, schema path of the same values)
CODE_ENUMS = [
    ("kicl.prompts.strategies", "STRATEGIES", "protocol.demo_strategy"),
    ("kicl.prompts.controls", "DEMO_ORDERS", "protocol.demo_order"),
    ("kicl.prompts.controls", "LABEL_CONTROLS", "protocol.labels"),
    ("kicl.prompts.files", "SPLITS", "analysis.figure_splits.[]"),
    ("kicl.capture.options", "SIMPRED_CONTEXTS", "capture.simpred_context"),
    ("kicl.capture.options", "PADDING_SIDES", "capture.padding_side"),
    ("kicl.store.pooling", "POOLINGS", "causal.pooling"),
    ("kicl.store.pooling", "POOLINGS", "analysis.poolings.[]"),
    ("kicl.store.pooling", "POOLINGS", "analysis.table_pooling"),
    ("kicl.analysis.votes", "TIES", "analysis.vote_ties"),
    ("kicl.analysis.correlation", "CORRELATION_UNITS", "analysis.correlation_unit"),
    ("kicl.analysis.attention_map", "MODES", "analysis.rescale_mode"),
    ("kicl.figures.fig3_reconstruction", "CENTERS", "analysis.reconstruction_color_center"),
    ("kicl.theory.kernel", "FEATURE_KINDS", "theory.kernel.features"),
    ("kicl.theory.kernel", "NORMALISATIONS", "theory.kernel.normalise"),
    ("kicl.theory.pretrain", "ARCHITECTURES", "theory_icl.model.architecture"),
    ("kicl.theory.pretrain", "AUTOCAST_DTYPES", "theory_icl.train.autocast"),
    ("kicl.data.tasks", "SOURCES", "tasks.*.source"),
    ("kicl.data.tasks", "PARSERS", "tasks.*.packaged.parser"),
]


@pytest.mark.parametrize(("module", "name", "path"), CODE_ENUMS, ids=[f"{m}.{n}={p}" for m, n, p in CODE_ENUMS])
def test_the_code_enumerations_equal_the_schema(module, name, path):
    import importlib

    values = getattr(importlib.import_module(module), name)
    assert sorted(values) == sorted(_schema_enum(path)), f"{module}.{name} vs schema {path}"


def test_the_catalog_sources_and_dtypes_equal_the_schema():
    from kicl.devices import DTYPE_NAMES

    for kind, sources in CATALOG_SOURCES.items():
        assert sorted(sources) == sorted(_schema_enum(f"{kind}.*.source")), kind
    assert [*DTYPE_NAMES, "auto"] == _schema_enum("models.*.dtype")
    assert list(DTYPE_NAMES) == _schema_enum("models.*.packaged_gguf.save_dtype")
