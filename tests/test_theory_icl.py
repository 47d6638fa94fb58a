"""The label world, its tokenizer, the exact posterior and a seeded tiny pre-training run (rules/theory_icl.smk)."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from kicl.config import ConfigError
from kicl.theory.icl_options import TheoryICLOptions
from kicl.theory.icl_world import (
    DELIMITER,
    MARKER,
    demo_log_likelihood,
    forward_joint,
    joint_likelihood,
    make_label_world,
    sample_documents,
    sample_examples,
    world_from_config,
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
    cfg = TheoryICLOptions.of({"world": WORLD, "chain": {"task_index": 1, "n_eval": 50, "n_demo_pool": 80}})
    splits = world_task_splits(cfg)
    assert len(splits["test"]) == 50 and len(splits["train"]) == 80
    world = world_from_config(cfg.world)
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


def _theory_cfg(**sections) -> TheoryICLOptions:
    """The schema's ``theory_icl`` defaults with the test world and the given sections' keys replaced."""
    return TheoryICLOptions.of({"world": WORLD, **sections})


def test_world_test_points_and_corpus_draw_independent_streams(tmp_path, monkeypatch):
    """All three seeds 0 (the defaults): the first corpus batch's document tasks are not the first test tasks, and
    the world is not drawn from that stream either (audit 2, L7: they shared default_rng(0)'s stream)."""
    import kicl.theory.pretrain as pretrain_module
    from kicl.theory.icl_compare import draw_test_points

    batches = []

    def recording(*args, **kwargs):
        docs, tasks = sample_documents(*args, **kwargs)
        batches.append(tasks)
        return docs, tasks

    monkeypatch.setattr(pretrain_module, "sample_documents", recording)
    _short_run(tmp_path, "streams", seed=0, batch_size=8)
    cfg = _theory_cfg()
    world = world_from_config(cfg.world)
    tests = draw_test_points(world, 8, cfg.world.x_len, 2, seed=0)["tasks"]
    assert cfg.world.seed == cfg.eval.seed == cfg.train.seed == 0
    assert not np.array_equal(batches[0], tests)
    assert not np.array_equal(world.transition, make_label_world(np.random.default_rng(0)).transition)


class PositionOnlyModel:
    """A stand-in transformer whose every head's last row attends to the last demonstration's first token only (a
    position-only head); its label logits are random."""

    def __init__(self, world, n_layers=2, n_heads=2):
        self.world, self.n_layers, self.n_heads = world, n_layers, n_heads

    def __call__(self, input_ids, output_attentions=True):
        import torch

        batch, length = input_ids.shape
        logits = torch.randn(batch, length, self.world.vocab_size, generator=torch.Generator().manual_seed(length))
        attention = torch.zeros(batch, self.n_heads, length, length)
        demo_starts = (input_ids[0] == MARKER).nonzero().flatten()[:-1] - WORLD["x_len"]
        attention[:, :, -1, int(demo_starts[-1]) if len(demo_starts) else 0] = 1.0
        return type("Out", (), {"logits": logits, "attentions": (attention,) * self.n_layers})()


def test_comparison_has_a_position_only_baseline_and_intervals():
    """The selected head of a position-only stand-in model is matched by the position-only baseline (its per-slot
    mean weight on select), and every number of the table has a bootstrap interval around it (audit 2, L7)."""
    from kicl.theory.icl_compare import compare, markdown_table

    cfg = _theory_cfg(eval={"n_demos": [0, 2, 4], "n_select": 40, "n_heldout": 60, "n_sigma": 200, "n_boot": 200})
    world = world_from_config(cfg.world)
    table, heads = compare(cfg, PositionOnlyModel(world))
    rows = table.set_index(["n", "method"])
    for n in (2, 4):
        position, last, head = (rows.loc[(n, m)] for m in ("position_only", "last_demo_label", "head_vote"))
        for metric in ("acc_sampled", "acc_expected", "agree_posterior", "agree_transformer"):
            assert position[metric] == last[metric] == head[metric]  # all three read the last demonstration's label
            assert position[f"{metric}_low"] <= position[metric] <= position[f"{metric}_high"]
        assert position["acc_sampled_low"] < position["acc_sampled_high"]
        assert np.isnan(position["l1_posterior"])
    assert (0, "position_only") not in rows.index
    assert rows.loc[(4, "transformer"), "l1_posterior_low"] < rows.loc[(4, "transformer"), "l1_posterior_high"]
    assert "position_only" in markdown_table(table, "acc_expected") and " [" in markdown_table(table, "acc_expected")


@pytest.mark.slow
def test_tiny_training_run_beats_label_frequency(tmp_path):
    """A seeded 2-layer GPT-J trained on ~0.4M tokens predicts held-out ICL labels better than the demo majority."""
    from transformers import AutoModelForCausalLM

    from kicl.theory.icl_compare import compare
    from kicl.theory.pretrain import pretrain

    cfg = _theory_cfg(
        model={"architecture": "gptj", "n_layer": 2, "n_embd": 64, "n_head": 4, "ctx": 64},
        train={"seed": 0, "tokens": 400_000, "batch_size": 16, "lr": 0.003, "warmup": 30, "log_every": 50},
        eval={"seed": 0, "n_demos": [0, 4], "n_select": 50, "n_heldout": 300, "n_sigma": 2000, "batch_size": 100},
    )
    curve = pretrain(cfg, tmp_path / "model", tmp_path / "loss.csv", threads=2)
    assert curve["loss"].iloc[-1] < curve["loss"].iloc[0] - 0.5
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "model", attn_implementation="eager").eval()
    table, _ = compare(cfg, model)
    at4 = table[table["n"] == 4].set_index("method")["acc_expected"]
    assert at4["transformer"] > at4["label_frequency"] + 0.05


def _short_run(tmp_path, name, job_threads=1, **train):
    from kicl.theory.pretrain import pretrain

    cfg = _theory_cfg(model={"n_layer": 1, "n_embd": 32, "n_head": 2, "ctx": 48}, eval={"n_demos": [0, 2]},
                      train={"tokens": 12 * 4 * 48, "batch_size": 4, "warmup": 3, "log_every": 1,
                             "label_loss_weight": 1.0, **train})  # fmt: skip
    curve = pretrain(cfg, tmp_path / name, tmp_path / f"{name}.csv", threads=job_threads)
    from safetensors.torch import load_file

    return curve, load_file(tmp_path / name / "model.safetensors")


def test_seeded_training_is_deterministic_with_every_option(tmp_path):
    """Same seed, same options: identical loss curves and weights; bfloat16 autocast is finite but not a no-op."""
    import torch

    plain, plain_weights = _short_run(tmp_path, "plain", autocast="none")
    again, again_weights = _short_run(tmp_path, "again", autocast="none")
    assert plain["loss"].tolist() == again["loss"].tolist()
    assert all(torch.equal(plain_weights[k], again_weights[k]) for k in plain_weights)
    bf16, bf16_weights = _short_run(tmp_path, "bf16", autocast="bfloat16")
    bf16_again, bf16_again_weights = _short_run(tmp_path, "bf16_again", autocast="bfloat16")
    assert np.isfinite(bf16[["loss", "label_loss", "objective"]].to_numpy()).all()
    assert bf16["loss"].tolist() == bf16_again["loss"].tolist()
    assert all(torch.equal(bf16_weights[k], bf16_again_weights[k]) for k in bf16_weights)
    assert all(v.dtype == torch.float32 for v in bf16_weights.values())  # master weights stay float32
    assert bf16["loss"].iloc[0] != plain["loss"].iloc[0]  # the forward pass really ran in bfloat16
    np.testing.assert_allclose(bf16["loss"].iloc[0], plain["loss"].iloc[0], atol=0.05)
    # eager and fused attention are the same function of the same initial weights
    eager, _ = _short_run(tmp_path, "eager", attention="eager")
    np.testing.assert_allclose(eager["loss"].iloc[0], plain["loss"].iloc[0], rtol=1e-5)
    # the label weight changes the objective, not the logged plain next-token loss of the first step
    weighted, _ = _short_run(tmp_path, "weighted", label_loss_weight=4.0)
    first = weighted.iloc[0]
    assert first["loss"] == pytest.approx(plain["loss"].iloc[0], rel=1e-6)
    assert first["objective"] != pytest.approx(first["loss"], rel=1e-3)
    assert first["label_loss"] != pytest.approx(first["loss"], rel=1e-3)
    # theory_icl.train.threads caps the job's threads
    _short_run(tmp_path, "capped", job_threads=2, threads=1)
    assert json.loads((tmp_path / "capped" / "kicl_training.json").read_text())["threads"] == 1
    _short_run(tmp_path, "two", job_threads=2, threads=2)
    assert json.loads((tmp_path / "two" / "kicl_training.json").read_text())["threads"] == 2


def test_weighted_loss_weights_label_targets(world):
    import torch

    from kicl.theory.pretrain import token_losses, weighted_loss

    ids = torch.from_numpy(sample_documents(world, 3, 40, 2, 8, np.random.default_rng(5))[0])
    logits = torch.randn(3, 40, world.vocab_size, generator=torch.Generator().manual_seed(0))
    losses = token_losses(logits, ids)
    by_hand = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, world.vocab_size), ids[:, 1:].reshape(-1),
                                                reduction="none").view(3, 39)  # fmt: skip
    torch.testing.assert_close(losses, by_hand)
    is_label = ids[:, :-1] == MARKER
    assert is_label.any() and torch.isin(ids[:, 1:][is_label], torch.as_tensor(world.label_ids())).all()
    expected = (by_hand[~is_label].sum() + 3.0 * by_hand[is_label].sum()) / ((~is_label).sum() + 3.0 * is_label.sum())
    torch.testing.assert_close(weighted_loss(losses, ids, 3.0), expected)
    torch.testing.assert_close(weighted_loss(losses, ids, 1.0), by_hand.mean())


def test_learning_rate_warms_up_and_decays_to_the_final_ratio():
    from kicl.theory.pretrain import learning_rate

    rates = [learning_rate(step, 100, 1e-3, 10, 0.1) for step in range(100)]
    assert rates[0] == pytest.approx(1e-4) and rates[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(rates[9:], rates[10:]))
    assert learning_rate(100, 100, 1e-3, 10, 0.1) == pytest.approx(1e-4)
    assert learning_rate(100, 100, 1e-3, 10, 0.0) == pytest.approx(0.0)


def test_unknown_training_options_name_the_key():
    with pytest.raises(ConfigError, match="config key theory_icl.train.autocast"):
        _theory_cfg(train={"autocast": "float8"})


def test_config_problems_name_the_keys():
    cfg = {"world": dict(WORLD, n_content=25), "model": {"n_embd": 64, "n_head": 4, "ctx": 100},
           "eval": {"n_demos": [0, 32]}, "chain": {"task_index": 9}}  # fmt: skip
    with pytest.raises(ConfigError) as error:
        TheoryICLOptions.of(cfg)
    problems = error.value.problems
    assert any("theory_icl.world.n_content" in p for p in problems)
    assert any("theory_icl.model.ctx" in p for p in problems)
    assert any("theory_icl.chain.task_index" in p for p in problems)
    cfg = {"world": WORLD, "model": {"n_embd": 64, "n_head": 4, "ctx": 272}, "eval": {"n_demos": [0, 32]},
           "chain": {"task_index": 0}}  # fmt: skip
    assert TheoryICLOptions.of(cfg).problems() == []
