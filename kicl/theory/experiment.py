"""The Table 3 experiment: kernel regression (Eq. 6) against the exact Bayesian posterior on random HMMs.

For each of ``n_hmms`` random block mixture-of-HMMs: estimate Σ, draw ``n_prompts`` ICL prompts (one task
θ* per prompt, max(n_demos) demonstrations and one test segment), and for every n in ``n_demos`` (nested
prefixes of the same demonstrations) compare each method's predictive distribution over y with the exact
P(y | o_ICL). Metrics are averaged over prompts per HMM; the table reports mean and s.d. over HMMs.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from kicl.config import SectionOptions
from kicl.fileio import atomic_path
from kicl.theory.hmm import (
    BlockHMM,
    joint_likelihood,
    labelled_likelihood,
    make_block_hmm,
    sample_segments,
    sample_tasks,
    start_forward,
)
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
from kicl.theory.posterior import oracle_predictive, posterior_from_weights, task_log_weights

log = logging.getLogger(__name__)

METHODS = ("kernel_regression", "nadaraya_watson", "nw_linear", "label_frequency", "oracle")
METRICS = ("l1", "l2", "acc_posterior", "acc_sampled")
MAX_EXACT_PREFIXES = 10**7  # exact Σ enumerates n_tokens^x_len prefixes; beyond this it takes minutes per HMM


# ---------------------------------------------------------------- configuration (the `theory:` section)
@dataclass(frozen=True)
class HMMConfig:
    """Generator of the random block mixture-of-HMM (note §1.1); meanings and defaults in the schema."""

    n_tasks: int
    states_per_task: int
    n_tokens: int
    x_len: int
    alpha_start: float
    alpha_trans: float
    alpha_emit: float
    floor: float
    no_return: bool


@dataclass(frozen=True)
class KernelConfig:
    """Features, Σ and its inverse (note §3); meanings and defaults in the schema."""

    features: str
    normalise: str
    sigma: str
    n_sigma: int
    ridge: float


@dataclass(frozen=True)
class TheoryConfig(SectionOptions):
    """The whole Table 3 experiment: :meth:`from_config` (schema defaults, the schema check, the Σ size check)."""

    seed: int
    n_hmms: int
    n_prompts: int
    n_demos: tuple[int, ...]
    hmm: HMMConfig
    kernel: KernelConfig

    SECTION = "theory"

    @classmethod
    def build(cls, values: dict) -> TheoryConfig:
        return cls(
            seed=values["seed"],
            n_hmms=values["n_hmms"],
            n_prompts=values["n_prompts"],
            n_demos=tuple(values["n_demos"]),
            hmm=_typed(HMMConfig, values["hmm"]),
            kernel=_typed(KernelConfig, values["kernel"]),
        )

    def problems(self) -> list[str]:
        """What the schema cannot express: exact Σ only for vocabularies it can enumerate."""
        n_prefixes = self.hmm.n_tokens**self.hmm.x_len
        if self.kernel.sigma == "exact" and n_prefixes > MAX_EXACT_PREFIXES:
            return [
                f"config key theory.kernel.sigma: exact enumeration of n_tokens^x_len = {n_prefixes} prefixes "
                f"exceeds {MAX_EXACT_PREFIXES}; use monte_carlo"
            ]
        return []


def _typed(cls, values: Mapping):
    """``cls(**values)`` with the float fields as floats (YAML may write 1 for 1.0)."""
    kinds = {f.name: f.type for f in dataclasses.fields(cls)}
    return cls(**{key: float(value) if kinds[key] == "float" else value for key, value in values.items()})


# ---------------------------------------------------------------- metrics
def prediction_metrics(prediction: np.ndarray, posterior: np.ndarray, sampled_y: np.ndarray) -> dict[str, np.ndarray]:
    """Per-prompt metrics of predictive distributions (..., V) against the exact posterior (..., V).

    l1 = ‖ŷ − P(·|o_ICL)‖₁ (the paper's distance), l2 = ‖ŷ − P(·|o_ICL)‖₂, acc_posterior = 1[argmax ŷ =
    argmax P(·|o_ICL)], acc_sampled = 1[argmax ŷ = y_test] with ``sampled_y`` broadcast against (...).
    Ties in argmax go to the lowest token index.
    """
    difference = prediction - posterior
    predicted = prediction.argmax(axis=-1)
    return {
        "l1": np.abs(difference).sum(axis=-1),
        "l2": np.sqrt((difference**2).sum(axis=-1)),
        "acc_posterior": (predicted == posterior.argmax(axis=-1)).astype(float),
        "acc_sampled": (predicted == sampled_y).astype(float),
    }


# ---------------------------------------------------------------- one HMM
def hmm_streams(seed: int, hmm_index: int) -> tuple[np.random.Generator, np.random.Generator, np.random.Generator]:
    """Independent generators for HMM ``hmm_index``: parameters, Σ prefixes, prompts.

    They derive from SeedSequence(seed, spawn_key=(hmm_index,)), so HMM h is the same whatever ``n_hmms``
    is, and changing the Σ options (n_sigma, features) does not change the prompts (pitfall P8).
    """
    children = np.random.SeedSequence(seed, spawn_key=(hmm_index,)).spawn(3)
    return tuple(np.random.default_rng(child) for child in children)


def make_hmm(config: TheoryConfig, rng: np.random.Generator) -> BlockHMM:
    """The random HMM of ``config.hmm`` (x_len is a prompt option, not a generator one)."""
    options = dataclasses.asdict(config.hmm)
    options.pop("x_len")
    return make_block_hmm(rng, **options)


def kernel_metric(config: TheoryConfig, hmm: BlockHMM, rng: np.random.Generator) -> np.ndarray:
    """A = (Σ + λI)⁻¹ for the configured features, Σ estimated by Monte Carlo or by exact enumeration."""
    kernel = config.kernel
    if kernel.sigma == "exact":
        sigma = second_moment_exact(hmm, config.hmm.x_len, kernel.features, kernel.normalise)
    else:
        sigma = second_moment_monte_carlo(hmm, config.hmm.x_len, kernel.n_sigma, rng, kernel.features, kernel.normalise)
    return regularised_inverse(sigma, kernel.ridge)


def evaluate_hmm(config: TheoryConfig, hmm_index: int) -> pd.DataFrame:
    """All methods and metrics for one random HMM, averaged over its prompts: rows (method, n)."""
    hmm_rng, sigma_rng, prompt_rng = hmm_streams(config.seed, hmm_index)
    hmm = make_hmm(config, hmm_rng)
    metric = kernel_metric(config, hmm, sigma_rng)

    ns = list(config.n_demos)
    n_max, x_len, n_prompts = max(ns), config.hmm.x_len, config.n_prompts
    tasks = sample_tasks(hmm, n_prompts, prompt_rng)
    segments = sample_segments(hmm, np.repeat(tasks, n_max + 1), x_len + 1, prompt_rng)
    segments = segments.reshape(n_prompts, n_max + 1, x_len + 1)
    demo_x, demo_y = segments[:, :n_max, :x_len], segments[:, :n_max, x_len]
    test_x, test_y = segments[:, n_max, :x_len], segments[:, n_max, x_len]

    # exact posterior P(y | o_ICL) for every n (closed form, log space) and the task-known oracle
    demo_log_lik = np.log(labelled_likelihood(hmm, start_forward(hmm, demo_x), demo_y))  # (P, N, K)
    log_weights = task_log_weights(hmm, demo_log_lik)[:, np.asarray(ns) - 1]  # (P, |ns|, K)
    test_joint = joint_likelihood(hmm, start_forward(hmm, test_x))  # (P, K, V)
    posterior = posterior_from_weights(log_weights, test_joint[:, None])  # (P, |ns|, V)
    oracle = oracle_predictive(test_joint, tasks)  # (P, V)

    # kernel regression and baselines on the same demonstrations
    demo_phi = features(hmm, demo_x, config.kernel.features, config.kernel.normalise)  # (P, N, D)
    test_phi = features(hmm, test_x, config.kernel.features, config.kernel.normalise)  # (P, D)
    counts = np.asarray(ns, dtype=float)[None, :, None]
    kernel_sums = prefix_label_sums(kernel_to_test(demo_phi, test_phi, metric), demo_y, hmm.n_tokens, ns)
    linear_sums = prefix_label_sums(kernel_to_test(demo_phi, test_phi, None), demo_y, hmm.n_tokens, ns)
    label_counts = prefix_label_sums(np.ones(demo_y.shape), demo_y, hmm.n_tokens, ns)
    predictions = {
        "kernel_regression": clip_normalise(kernel_sums / counts),
        "nadaraya_watson": sum_normalise(kernel_sums),
        "nw_linear": sum_normalise(linear_sums),
        "label_frequency": label_counts / counts,
        "oracle": np.broadcast_to(oracle[:, None], posterior.shape),
    }
    rows = []
    for method in METHODS:
        per_prompt = prediction_metrics(predictions[method], posterior, test_y[:, None])
        for column, n in enumerate(ns):
            rows.append(
                {"hmm": hmm_index, "method": method, "n": n}
                | {name: float(values[:, column].mean()) for name, values in per_prompt.items()}
            )
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- the whole table
def run_table3(config: TheoryConfig) -> pd.DataFrame:
    """Run the experiment; one row per (hmm, method, n) with the prompt-averaged metrics."""
    log.info(
        "Table 3: %d HMMs x %d prompts, n = %s, kernel %s",
        config.n_hmms,
        config.n_prompts,
        list(config.n_demos),
        config.kernel,
    )
    frames = []
    for hmm_index in range(config.n_hmms):
        started = time.perf_counter()
        frames.append(evaluate_hmm(config, hmm_index))
        kr = frames[-1].query("method == 'kernel_regression'")
        log.info(
            "HMM %d/%d in %.2fs: kernel regression accuracy %s",
            hmm_index + 1,
            config.n_hmms,
            time.perf_counter() - started,
            np.round(kr["acc_posterior"].to_numpy(), 3).tolist(),
        )
    return pd.concat(frames, ignore_index=True)


def summarise_table3(per_hmm: pd.DataFrame, n_prompts: int) -> pd.DataFrame:
    """Mean and s.d. (ddof = 1; NaN for a single HMM) over HMMs of each metric, per method and n."""
    grouped = per_hmm.groupby(["method", "n"], sort=False)[list(METRICS)]
    summary = grouped.agg(["mean", "std"])
    summary.columns = [f"{metric}_{'sd' if stat == 'std' else stat}" for metric, stat in summary.columns]
    summary = summary.reset_index()
    summary.insert(2, "n_hmms", grouped.size().to_numpy())
    summary.insert(3, "n_prompts", n_prompts)
    return summary


def write_table3(config: dict, table_csv: str | os.PathLike, per_hmm_csv: str | os.PathLike, threads: int = 1) -> None:
    """Run Table 3 from the ``theory`` config section; write the summary and the per-HMM CSV atomically."""
    from threadpoolctl import threadpool_limits

    config = TheoryConfig.of(config)
    started = time.perf_counter()
    with threadpool_limits(limits=threads):
        per_hmm = run_table3(config)
    summary = summarise_table3(per_hmm, config.n_prompts)
    log.info(
        "Table 3 done in %.1fs\n%s",
        time.perf_counter() - started,
        summary.query("method == 'kernel_regression'").to_string(index=False, float_format="%.3f"),
    )
    with atomic_path(per_hmm_csv) as temporary:
        per_hmm.to_csv(temporary, index=False, float_format="%.10g")
    with atomic_path(table_csv) as temporary:
        summary.to_csv(temporary, index=False, float_format="%.10g")
