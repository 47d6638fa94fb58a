"""The decision rule on planted prompts: the adversarial heads of science-audit-2 are never called a kernel, and
a head that is a kernel over the inputs is."""

import numpy as np
import pytest

from kicl.analysis import decision as dec
from kicl.analysis.competitors import fit_label_sequence, label_sequence_features, label_sequence_predict
from kicl.analysis.invariance import cross_products, residual_weights
from kicl.analysis.votes import reconstruct, tie_priority
from kicl.config import defaults_for

N_DEMOS, N_NOISE_HEADS = 8, 5
RULE = dec.DecisionRule.from_config({**defaults_for("analysis")["decision"], "n_boot": 200, "inner_folds": 3})


def _world(rng, n):
    """Latent inputs of demonstrations and test points, gold-ish labels from the latent sign."""
    z_demo = rng.normal(size=(n, N_DEMOS))
    z_test = rng.normal(size=n)
    labels = (z_demo + 0.5 * rng.normal(size=z_demo.shape) > 0).astype(int)
    return z_demo, z_test, labels


def _data(kw_gold, kw_flip, labels, pred, pred_flip, rng, n_labels=2):
    """DecisionData with the planted head at index 0 beside content-free noise heads."""
    n = len(pred)
    noise = rng.uniform(0.5, 1.5, (n, N_NOISE_HEADS, N_DEMOS))
    kw = np.concatenate([kw_gold[:, None, :], noise], 1)
    flip = np.concatenate([kw_flip[:, None, :], rng.uniform(0.5, 1.5, noise.shape)], 1)
    priority = tie_priority(pred[: n // 2], n_labels)
    yt = reconstruct(kw, labels, n_labels, priority)
    products = cross_products(
        residual_weights(kw, labels, pred, n_labels), residual_weights(flip, 1 - labels, pred_flip, n_labels)
    )
    fold = (np.arange(n) >= n // 2).astype(int)
    return dec.DecisionData(yt, kw, labels, pred, fold, n_labels, n_heads=N_NOISE_HEADS + 1, products=products)


def test_a_kernel_over_the_inputs_is_supported():
    rng = np.random.default_rng(0)
    n = 800
    z_demo, z_test, labels = _world(rng, n)
    kernel = np.exp(-np.abs(z_demo - z_test[:, None]) / 0.5)
    noisy = lambda: kernel * rng.uniform(0.9, 1.1, kernel.shape)  # noqa: E731
    pred = reconstruct(kernel, labels, 2, "lowest")
    result = dec.decide(_data(noisy(), noisy(), labels, pred, 1 - pred, rng), RULE)
    assert result["heads"] == [(0, 0), (0, 0)]
    assert result["advantage"] == dec.MET and result["label_invariance"] == dec.MET
    assert result["decision"] == "supports"


def test_a_content_free_head_does_not_win_on_vote_ties():
    """ŷ = majority of the shown labels, 75% label 1 on 4-4 ties; the head has no content and no position."""
    rng = np.random.default_rng(1)
    n = 1000
    labels = rng.integers(0, 2, (n, N_DEMOS))
    ones = labels.sum(1)
    pred = np.where(ones * 2 == N_DEMOS, (rng.random(n) < 0.75).astype(int), (ones * 2 > N_DEMOS).astype(int))
    head = rng.uniform(0.5, 1.5, labels.shape)
    result = dec.decide(_data(head, rng.uniform(0.5, 1.5, labels.shape), labels, pred, 1 - pred, rng), RULE)
    assert result["tie_rate"] == pytest.approx(0.27, abs=0.04)
    assert result["advantage"] == dec.MISSED
    assert result["decision"] == "contradicts"


def test_a_label_match_head_fails_label_invariance():
    """The head attends to the demonstrations whose label is ŷ (an answer-readout head), not to x."""
    rng = np.random.default_rng(2)
    n = 800
    z_demo, z_test, labels = _world(rng, n)
    pred = reconstruct(np.exp(-np.abs(z_demo - z_test[:, None])), labels, 2, "lowest")
    match = lambda lab, p: (lab == p[:, None]) + 0.2 * rng.random(lab.shape)  # noqa: E731
    result = dec.decide(_data(match(labels, pred), match(1 - labels, 1 - pred), labels, pred, 1 - pred, rng), RULE)
    assert result["label_invariance"] == dec.MISSED
    assert result["decision"] == "contradicts"


def test_a_position_only_head_is_not_a_kernel():
    """ŷ is a recency-weighted vote; the head's weights are the recency profile times noise."""
    rng = np.random.default_rng(3)
    n = 800
    labels = rng.integers(0, 2, (n, N_DEMOS))
    profile = 1.6 ** np.arange(N_DEMOS)
    pred = reconstruct(np.broadcast_to(profile, labels.shape), labels, 2, "lowest")
    head = lambda: profile * rng.uniform(0.8, 1.2, labels.shape)  # noqa: E731
    result = dec.decide(_data(head(), head(), labels, pred, 1 - pred, rng), RULE)
    assert result["label_invariance"] == dec.MISSED
    assert result["advantage"] != dec.MET
    assert result["decision"] == "contradicts"


def test_without_a_partner_the_rule_cannot_support():
    rng = np.random.default_rng(0)
    z_demo, z_test, labels = _world(rng, 400)
    kernel = np.exp(-np.abs(z_demo - z_test[:, None]) / 0.5)
    pred = reconstruct(kernel, labels, 2, "lowest")
    data = _data(kernel, kernel, labels, pred, 1 - pred, rng)
    data.products = None
    result = dec.decide(data, RULE)
    assert result["label_invariance"] == dec.OPEN and result["decision"] != "supports"


def test_label_sequence_model_learns_recency_and_vote():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 3, (600, N_DEMOS))
    features = label_sequence_features(labels, 3)
    for target in (labels[:, -1], reconstruct(np.ones(labels.shape), labels, 3, "recent")):
        beta = fit_label_sequence(features[:400], target[:400], np.ones((1, 400)))
        assert (label_sequence_predict(features[400:], beta)[0] == target[400:]).mean() > 0.9


def test_statuses_read_the_interval():
    assert dec.advantage_status(0.01, 0.09, 0.03) == dec.MET
    assert dec.advantage_status(-0.02, 0.02, 0.03) == dec.MISSED  # equivalent within the margin
    assert dec.advantage_status(-0.09, -0.01, 0.03) == dec.MISSED
    assert dec.advantage_status(-0.02, 0.08, 0.03) == dec.OPEN
    assert dec.invariance_status(0.55, 0.7, 0.5) == dec.MET
    assert dec.invariance_status(0.2, 0.45, 0.5) == dec.MISSED
    assert dec.decision_of([dec.MET, dec.OPEN]) == "undecided"
    assert dec.prompts_to_decide(0.0, 0.2, RULE) < np.inf


def test_the_rule_reads_every_key_of_its_schema_section():
    from dataclasses import fields

    assert {f.name for f in fields(dec.DecisionRule)} | {"partner"} == set(defaults_for("analysis")["decision"])
