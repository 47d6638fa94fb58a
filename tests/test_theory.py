"""Kernel regression (Eq. 6): features, Σ, unbiasedness; the Table 3 experiment, its config and outputs."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from kicl.config import config_errors
from kicl.figures.table3 import write_table3_figure
from kicl.tables.paper import PAPER_TABLE3
from kicl.tables.table3 import table3_html, table3_markdown
from kicl.theory.experiment import METHODS, TheoryConfig, prediction_metrics, run_table3, summarise_table3, write_table3
from kicl.theory.hmm import BlockHMM, joint_likelihood, make_block_hmm, sample_segments, start_forward
from kicl.theory.kernel import (
    clip_normalise,
    features,
    kernel_to_test,
    prefix_label_sums,
    regularised_inverse,
    second_moment_exact,
    second_moment_monte_carlo,
    sum_normalise,
)
from kicl.theory.table3 import figure_data

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "schemas" / "config.schema.yaml"
X_LEN = 2


def tiny_hmm(seed: int = 0) -> BlockHMM:
    """2 tasks x 3 states x 5 tokens with moderately peaked rows: the kernel is far from diagonal."""
    return make_block_hmm(
        np.random.default_rng(seed), n_tasks=2, states_per_task=3, n_tokens=5, alpha_trans=0.5, alpha_emit=0.3
    )


def all_prefixes(hmm: BlockHMM, length: int = X_LEN) -> np.ndarray:
    return np.array(list(itertools.product(range(hmm.n_tokens), repeat=length)))


# ---------------------------------------------------------------- features and Σ
def test_pre_features_are_beliefs_over_the_prior():
    """φ(x)[θ, s] = P(θ, s_l = s | x)/π_θ, so Σ_θ π_θ Σ_s φ = 1 (the direction centring would kill, P3)."""
    hmm = make_block_hmm(np.random.default_rng(0))
    inputs = sample_segments(hmm, np.arange(40) % 8, 3, np.random.default_rng(1))
    phi = features(hmm, inputs, "start", "pre").reshape(40, 8, 10)
    np.testing.assert_allclose(np.einsum("nks,k->n", phi, hmm.task_prior), 1.0, rtol=1e-12)
    full = features(hmm, inputs, "full", "pre").reshape(40, 8, 10, 10)
    np.testing.assert_allclose(full[:, :, 0, :], phi, rtol=1e-12)
    literal = features(hmm, inputs, "start", "none").reshape(40, 8, 10)
    np.testing.assert_allclose(literal, start_forward(hmm, inputs), rtol=1e-12)


def test_joint_likelihood_is_linear_in_pre_features():
    """P(x, y | θ)/P(x | p) = w_{θ,y}ᵀ φ(x): the premise of the exactness theorem (note §3.3)."""
    hmm = tiny_hmm(1)
    prefixes = all_prefixes(hmm)
    phi = features(hmm, prefixes, "start", "pre").reshape(len(prefixes), hmm.n_tasks, hmm.states_per_task)
    evidence = start_forward(hmm, prefixes).sum(axis=-1) @ hmm.task_prior
    joint = joint_likelihood(hmm, start_forward(hmm, prefixes))  # (N, K, V)
    np.testing.assert_allclose(np.einsum("nks,ksv->nkv", phi, hmm.emission), joint / evidence[:, None, None])


def test_monte_carlo_sigma_converges_to_the_exact_second_moment():
    hmm = tiny_hmm(2)
    exact = second_moment_exact(hmm, X_LEN)
    estimate = second_moment_monte_carlo(hmm, X_LEN, 200_000, np.random.default_rng(0))
    assert exact.shape == (6, 6)
    np.testing.assert_allclose(estimate, exact, atol=0.03 * np.abs(exact).max())
    # uncentred: the prior-weighted all-ones direction carries the mass Σ_θ π_θ Σ_s φ = 1
    direction = np.repeat(hmm.task_prior, hmm.states_per_task)
    assert direction @ exact @ direction == pytest.approx(1.0)


def test_regularised_inverse_ridge_and_pseudo_inverse():
    hmm = tiny_hmm(3)
    sigma = second_moment_exact(hmm, X_LEN)  # singular: the start-state column is never reached
    assert np.linalg.matrix_rank(sigma) < sigma.shape[0]
    pinv = regularised_inverse(sigma, 0.0)
    np.testing.assert_allclose(sigma @ pinv @ sigma, sigma, atol=1e-10)
    ridge = regularised_inverse(sigma, 1e-3)
    lam = 1e-3 * np.trace(sigma) / sigma.shape[0]
    np.testing.assert_allclose(ridge @ (sigma + lam * np.eye(6)), np.eye(6), atol=1e-8)


# ---------------------------------------------------------------- unbiasedness (note §3.3)
def expected_estimate(hmm: BlockHMM, task: int, test_input, kind: str, normalise: str, metric) -> np.ndarray:
    """E[ŷ_n] = Σ_{x,y} P(x, y | θ*) e(y) K(x, x_test), by exact enumeration (the same for every n)."""
    prefixes = all_prefixes(hmm)
    joint = joint_likelihood(hmm, start_forward(hmm, prefixes))[:, task]  # (N, V)
    demo_phi, test_phi = features(hmm, prefixes, kind, normalise), features(hmm, test_input, kind, normalise)
    kernel = kernel_to_test(demo_phi, test_phi, metric)
    return joint.T @ kernel


@pytest.mark.parametrize("kind", ["start", "full"])
def test_eq6_is_exactly_unbiased_for_the_task_known_posterior(kind):
    """With pre-normalised features and the exact Σ: E[ŷ](y) = P(x_test, y | θ*)/P(x_test | p)."""
    hmm = tiny_hmm(4)
    metric = regularised_inverse(second_moment_exact(hmm, X_LEN, kind, "pre"), 0.0)
    for task, test_input in itertools.product(range(hmm.n_tasks), [(0, 0), (1, 3), (4, 2)]):
        test_input = np.array(test_input)
        joint = joint_likelihood(hmm, start_forward(hmm, test_input))[task]
        evidence = start_forward(hmm, test_input).sum(axis=-1) @ hmm.task_prior
        expected = expected_estimate(hmm, task, test_input, kind, "pre", metric)
        np.testing.assert_allclose(expected, joint / evidence, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(expected / expected.sum(), joint / joint.sum(), rtol=1e-8)


def test_unnormalised_features_are_biased():
    """The literal vec(T_x) with Σ_p is not unbiased (the paper's η²ε_θ term), so the check above can fail."""
    hmm = tiny_hmm(4)
    metric = regularised_inverse(second_moment_exact(hmm, X_LEN, "start", "none"), 0.0)
    worst = 0.0
    for task, test_input in itertools.product(range(hmm.n_tasks), all_prefixes(hmm)):
        joint = joint_likelihood(hmm, start_forward(hmm, test_input))[task]
        expected = expected_estimate(hmm, task, test_input, "start", "none", metric)
        worst = max(worst, np.abs(expected / expected.sum() - joint / joint.sum()).max())
    assert worst > 0.01


def test_eq6_mean_over_many_prompts_matches_the_oracle_within_its_standard_error():
    """Sampled demonstrations (the experiment's sampler) averaged over many prompts hit the exact target."""
    hmm, task, n, n_prompts = tiny_hmm(5), 1, 4, 40_000
    test_input = np.array([2, 1])
    metric = regularised_inverse(second_moment_exact(hmm, X_LEN), 0.0)
    segments = sample_segments(hmm, np.full(n_prompts * n, task), X_LEN + 1, np.random.default_rng(6))
    segments = segments.reshape(n_prompts, n, X_LEN + 1)
    kernel = kernel_to_test(features(hmm, segments[..., :X_LEN]), features(hmm, test_input), metric)
    estimates = prefix_label_sums(kernel, segments[..., X_LEN], hmm.n_tokens, [n])[:, 0] / n  # (P, V)
    joint = joint_likelihood(hmm, start_forward(hmm, test_input))[task]
    target = joint / (start_forward(hmm, test_input).sum(axis=-1) @ hmm.task_prior)
    standard_error = estimates.std(axis=0, ddof=1) / np.sqrt(n_prompts)
    assert np.all(np.abs(estimates.mean(axis=0) - target) <= 4.5 * standard_error + 1e-12)
    # and the test has power: the label frequency (which ignores x_test) is far outside that band
    frequency = np.bincount(segments[..., X_LEN].ravel(), minlength=hmm.n_tokens) / (n_prompts * n)
    assert np.any(np.abs(frequency * target.sum() - target) > 10 * standard_error)


# ---------------------------------------------------------------- normalisations, sums, metrics
def test_clip_and_sum_normalisation():
    scores = np.array([[2.0, -1.0, 2.0], [-1.0, -2.0, 0.0], [1.0, 1.0, -2.0]])
    np.testing.assert_allclose(clip_normalise(scores), [[0.5, 0, 0.5], [1 / 3] * 3, [0.5, 0.5, 0]])
    summed = sum_normalise(scores)
    np.testing.assert_allclose(summed[0], [2 / 3, -1 / 3, 2 / 3])
    np.testing.assert_allclose(summed[2], [1 / 3] * 3)  # the sum is exactly 0: uniform


def test_prefix_label_sums_match_a_loop():
    rng = np.random.default_rng(0)
    weights, labels = rng.normal(size=(3, 10)), rng.integers(0, 4, size=(3, 10))
    sums = prefix_label_sums(weights, labels, 4, [1, 3, 10])
    for p, (column, n) in itertools.product(range(3), enumerate([1, 3, 10])):
        expected = np.zeros(4)
        for i in range(n):
            expected[labels[p, i]] += weights[p, i]
        np.testing.assert_allclose(sums[p, column], expected)


def test_prediction_metrics():
    prediction = np.array([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    posterior = np.array([[0.6, 0.3, 0.1], [0.0, 1.0, 0.0]])
    metrics = prediction_metrics(prediction, posterior, np.array([1, 2]))
    np.testing.assert_allclose(metrics["l1"], [0.4, 2.0])
    np.testing.assert_allclose(metrics["l2"], [np.sqrt(0.01 + 0.04 + 0.01), np.sqrt(2)])
    np.testing.assert_array_equal(metrics["acc_posterior"], [1.0, 0.0])  # ties go to the lowest index
    np.testing.assert_array_equal(metrics["acc_sampled"], [0.0, 1.0])


# ---------------------------------------------------------------- config
def test_config_defaults_agree_with_the_schema_and_config_yaml():
    schema = yaml.safe_load(SCHEMA.read_text())
    theory_schema = schema["properties"]["theory"]
    assert TheoryConfig.from_config(yaml.safe_load((REPO / "config.yaml").read_text())) == TheoryConfig.of({})

    def every_key_documented(node: dict, path: str):
        for key, value in node["properties"].items():
            assert "description" in value and "default" in value, f"{path}.{key} lacks a description or default"
            if value.get("type") == "object":
                assert value.get("additionalProperties") is False, f"{path}.{key} accepts unknown keys"
                every_key_documented(value, f"{path}.{key}")

    every_key_documented(theory_schema, "theory")


BAD_CONFIGS = [
    ({"n_hmms": -1}, "theory.n_hmms", "minimum"),
    ({"n_prompts": 0}, "theory.n_prompts", "minimum"),
    ({"n_hmm": 3}, "theory.n_hmm", "unknown key"),
    ({"kernel": {"n_sigma": "many"}}, "theory.kernel.n_sigma", "type"),
    ({"kernel": {"features": "diagonal"}}, "theory.kernel.features", "one of"),
    ({"hmm": {"alpha_emit": 0}}, "theory.hmm.alpha_emit", "0"),
    ({"hmm": {"no_return": "yes"}}, "theory.hmm.no_return", "type"),
    ({"n_demos": [1, 0, 4]}, "theory.n_demos", "minimum"),
    ({"n_demos": [2, 2]}, "theory.n_demos", ""),
]


@pytest.mark.parametrize(("theory", "key", "problem"), BAD_CONFIGS)
def test_bad_config_is_rejected_naming_the_key(theory, key, problem):
    with pytest.raises(ValueError, match=rf"config key {key.replace('.', '[.]')}"):
        TheoryConfig.of(theory)
    schema_lines = config_errors({"theory": theory}, SCHEMA)
    assert len(schema_lines) == 1 and schema_lines[0].startswith(f"config key {key}")
    assert problem in schema_lines[0]


def test_exact_sigma_refuses_huge_vocabularies_before_running():
    with pytest.raises(ValueError, match="theory.kernel.sigma"):
        TheoryConfig.of({"kernel": {"sigma": "exact"}, "hmm": {"x_len": 4}})


def test_good_config_has_no_schema_errors():
    assert config_errors(yaml.safe_load((REPO / "config.yaml").read_text()), SCHEMA) == []


# ---------------------------------------------------------------- the experiment
SMALL = {"n_hmms": 3, "n_prompts": 30, "n_demos": [1, 4, 32], "kernel": {"n_sigma": 1000}}


def test_run_table3_is_deterministic_by_seed_and_hmm_index():
    first, again = run_table3(TheoryConfig.of(SMALL)), run_table3(TheoryConfig.of(SMALL))
    pd.testing.assert_frame_equal(first, again)
    other_seed = run_table3(TheoryConfig.of(SMALL | {"seed": 1}))
    assert not np.allclose(first["l1"], other_seed["l1"])
    # HMM h does not depend on how many HMMs are run
    fewer = run_table3(TheoryConfig.of(SMALL | {"n_hmms": 2}))
    pd.testing.assert_frame_equal(fewer, first[first["hmm"] < 2].reset_index(drop=True))
    # changing the Σ sample size leaves the prompts (and so the posterior-only oracle numbers) alone
    more_sigma = run_table3(TheoryConfig.of(SMALL | {"kernel": {"n_sigma": 3000}}))
    oracle = first["method"] == "oracle"
    pd.testing.assert_frame_equal(more_sigma[oracle], first[oracle])


def test_summary_and_outputs(tmp_path):
    table, per_hmm = tmp_path / "table3.csv", tmp_path / "per_hmm.csv"
    write_table3(SMALL | {"n_prompts": 60}, table, per_hmm)
    summary = pd.read_csv(table)
    assert set(summary["method"]) == set(METHODS)
    assert sorted(summary["n"].unique()) == [1, 4, 32]
    assert (summary["n_hmms"] == 3).all() and (summary["n_prompts"] == 60).all()
    kr = summary[summary["method"] == "kernel_regression"].set_index("n")
    assert kr.loc[32, "acc_posterior_mean"] > kr.loc[1, "acc_posterior_mean"] + 0.3
    assert kr.loc[1, "l1_mean"] > 1.0 > 0.3 > kr.loc[32, "l1_mean"]
    oracle = summary[summary["method"] == "oracle"]
    assert (oracle["acc_posterior_mean"] > 0.99).all()
    # the summary is the mean and s.d. over HMMs of the per-HMM file
    per = pd.read_csv(per_hmm)
    recomputed = summarise_table3(per, 60)
    np.testing.assert_allclose(recomputed["l1_sd"], summary["l1_sd"], rtol=1e-6, atol=1e-12)

    markdown = table3_markdown(summary)
    assert "| paper distance | 1.322 | 0.519 | 0.085 |" in markdown
    assert "| paper accuracy | 0.337 | 0.745 | 0.968 |" in markdown
    assert f"{kr.loc[32, 'acc_posterior_mean']:.3f} ± " in markdown
    assert "<td>0.337</td>" in table3_html(summary)

    data = figure_data(summary)
    assert set(data["panel"]) == {"distance", "accuracy"}
    paper = data[(data["series"] == "paper") & (data["panel"] == "accuracy")]
    np.testing.assert_allclose(paper["value"], PAPER_TABLE3["accuracy"])
    write_table3_figure(table, tmp_path / "figure.png", tmp_path / "figure.csv")
    assert (tmp_path / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".tmp-*"))  # atomic writes leave no temporary files
