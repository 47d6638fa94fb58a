"""The label world, its tokenizer, the exact posterior and a seeded tiny pre-training run (rules/theory_icl.smk)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from kicl.theory.icl_world import (
    DELIMITER,
    MARKER,
    demo_log_likelihood,
    forward_joint,
    joint_likelihood,
    make_label_world,
    sample_documents,
    sample_examples,
    world_task_splits,
)

WORLD = {"seed": 0, "n_tasks": 6, "n_states": 12, "n_content": 24, "n_labels": 4, "mix": 0.25, "alpha_trans": 0.15,
         "emit_noise": 0.1, "label_noise": 0.1, "min_len": 2, "max_len": 8, "x_len": 5}  # fmt: skip


@pytest.fixture(scope="module")
def world():
    return make_label_world(np.random.default_rng(0))


def test_tokenizer_round_trips(world, tmp_path):
    from transformers import AutoTokenizer

    from kicl.prompts.build import PieceTokenizer
    from kicl.theory.pretrain import build_tokenizer

    build_tokenizer(world).save_pretrained(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    for index, symbol in enumerate(world.symbols()[:-2]):
        assert tokenizer(symbol, add_special_tokens=False)["input_ids"] == [index]
    docs, _ = sample_documents(world, 4, 64, 2, 8, np.random.default_rng(1))
    for row in docs:
        text = "".join(world.symbols()[i] for i in row)
        assert tokenizer.decode(list(row)) == text
        assert tokenizer(text, add_special_tokens=False)["input_ids"] == list(row)
    assert tokenizer("o1", add_special_tokens=True)["input_ids"][0] == DELIMITER  # BOS = the delimiter
    pieces = PieceTokenizer(tokenizer, where="test")
    verbalizers = [f" y{c}" for c in range(world.n_labels)]
    assert pieces.label_token_ids(verbalizers, "single_token") == list(world.label_ids())
    assert pieces.encode(" o3 o17 o5") == list(world.content_ids([3, 17, 5]))


def test_documents_have_the_segment_structure(world):
    docs, _ = sample_documents(world, 8, 200, 2, 8, np.random.default_rng(2))
    labels = set(world.label_ids().tolist())
    for row in docs:
        assert row[0] == DELIMITER
        markers = np.flatnonzero(row == MARKER)
        delims = np.flatnonzero(row == DELIMITER)
        for m in markers[markers + 2 < len(row)]:
            assert row[m + 1] in labels and row[m + 2] == DELIMITER
            previous = delims[delims < m].max()
            assert 2 <= m - previous - 1 <= 8  # the segment's input length


def test_forward_joint_matches_brute_force(world):
    x = np.array([3, 5, 7])
    brute = np.zeros((world.n_tasks, world.n_states))
    for task in range(world.n_tasks):
        for path in itertools.product(range(world.n_states), repeat=3):
            p = world.start[path[0]] * world.emission[path[0], x[0]]
            for t in (1, 2):
                p *= world.transition[task, path[t - 1], path[t]] * world.emission[path[t], x[t]]
            brute[task, path[2]] += p
    np.testing.assert_allclose(forward_joint(world, x[None])[0], brute, rtol=1e-10)


def test_labels_follow_the_emission_probabilities(world):
    """Empirical (x, y) frequencies of one task against the exact P(x, y | θ) (length-2 inputs, 200k draws)."""
    rng = np.random.default_rng(3)
    n, task = 200_000, 2
    content, labels = sample_examples(world, np.full(n, task), 2, rng)
    joint = np.zeros((world.n_content, world.n_content, world.n_labels))
    np.add.at(joint, (content[:, 0], content[:, 1], labels), 1.0)
    grid = np.stack(np.meshgrid(np.arange(world.n_content), np.arange(world.n_content), indexing="ij"), -1)
    exact = joint_likelihood(world, forward_joint(world, grid.reshape(-1, 2)))[:, task].reshape(joint.shape)
    assert np.isclose(exact.sum(), 1.0)
    # every cell within 5 binomial standard deviations (plus a small floor for near-empty cells)
    sd = np.sqrt(n * exact * (1 - exact))
    assert np.all(np.abs(joint - n * exact) <= 5 * sd + 3)
    # and a label emitted from the wrong state (the next one) is clearly rejected by the same test
    wrong = np.einsum("xyks,kst->xyt", forward_joint(world, grid.reshape(-1, 2)).reshape(24, 24, 6, 12)[..., [task], :]
                      @ world.transition[task][None], world.labelling[[task]]).reshape(joint.shape)  # fmt: skip
    assert not np.all(np.abs(joint - n * wrong) <= 5 * np.sqrt(n * wrong * (1 - wrong)) + 3)


def test_world_task_stores_the_exact_posterior():
    cfg = {"world": WORLD, "chain": {"task_index": 1, "n_eval": 50, "n_demo_pool": 80}}
    splits = world_task_splits(cfg)
    assert len(splits["test"]) == 50 and len(splits["train"]) == 80
    world = make_label_world(np.random.default_rng(0))
    row = splits["test"].iloc[0]
    x = np.array([int(t[1:]) for t in row["text"].split()])
    joint = joint_likelihood(world, forward_joint(world, x[None]))[0]
    oracle = [row[f"oracle_y{c}"] for c in range(4)]
    np.testing.assert_allclose(oracle, joint[1] / joint[1].sum())
    assert set(splits["test"]["label"]) <= {0, 1, 2, 3}


def test_posterior_concentrates_on_the_true_task(world):
    rng = np.random.default_rng(4)
    demo_x, demo_y = sample_examples(world, np.full(64, 3), 5, rng)
    log_lik = demo_log_likelihood(world, demo_x, demo_y).sum(0)
    assert np.argmax(log_lik) == 3


def test_tiny_training_run_beats_label_frequency(tmp_path):
    """A seeded 2-layer GPT-J trained on ~0.3M tokens predicts held-out ICL labels better than the demo majority."""
    from transformers import AutoModelForCausalLM

    from kicl.theory.icl_compare import compare
    from kicl.theory.pretrain import pretrain

    cfg = {
        "world": WORLD,
        "model": {"architecture": "gptj", "n_layer": 2, "n_embd": 64, "n_head": 4, "ctx": 64},
        "train": {"seed": 0, "tokens": 400_000, "batch_size": 16, "lr": 0.003, "warmup": 30, "weight_decay": 0.01,
                  "log_every": 50},
        "eval": {"seed": 0, "n_demos": [0, 4], "n_select": 50, "n_heldout": 300, "n_sigma": 2000, "ridge": 1e-6,
                 "batch_size": 100},
    }  # fmt: skip
    curve = pretrain(cfg, tmp_path / "model", tmp_path / "loss.csv", threads=2)
    assert curve["loss"].iloc[-1] < curve["loss"].iloc[0] - 0.5
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "model", attn_implementation="eager").eval()
    table, _ = compare(cfg, model)
    at4 = table[table["n"] == 4].set_index("method")["acc_expected"]
    assert at4["transformer"] > at4["label_frequency"] + 0.05


def test_config_problems_name_the_keys():
    from kicl.theory.icl_world import config_problems

    cfg = {"world": dict(WORLD, n_content=25), "model": {"n_embd": 64, "n_head": 4, "ctx": 100},
           "eval": {"n_demos": [0, 32]}, "chain": {"task_index": 9}}  # fmt: skip
    problems = config_problems(cfg)
    assert any("theory_icl.world.n_content" in p for p in problems)
    assert any("theory_icl.model.ctx" in p for p in problems)
    assert any("theory_icl.chain.task_index" in p for p in problems)
    cfg = {"world": WORLD, "model": {"n_embd": 64, "n_head": 4, "ctx": 272}, "eval": {"n_demos": [0, 32]},
           "chain": {"task_index": 0}}  # fmt: skip
    assert config_problems(cfg) == []
