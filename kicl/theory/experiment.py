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
import types
import typing
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

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


# ---------------------------------------------------------------- configuration (mirrors the `theory:` schema)
def _check(minimum=None, exclusive_minimum=None, choices=None):
    return {"minimum": minimum, "exclusive_minimum": exclusive_minimum, "choices": choices}


@dataclass(frozen=True)
class HMMConfig:
    """Generator of the random block mixture-of-HMM (note §1.1)."""

    n_tasks: int = field(default=8, metadata=_check(minimum=1))
    states_per_task: int = field(default=10, metadata=_check(minimum=2))
    n_tokens: int = field(default=100, metadata=_check(minimum=2))
    x_len: int = field(default=3, metadata=_check(minimum=1))
    alpha_start: float = field(default=1.0, metadata=_check(exclusive_minimum=0))
    alpha_trans: float = field(default=0.001, metadata=_check(exclusive_minimum=0))
    alpha_emit: float = field(default=0.0003, metadata=_check(exclusive_minimum=0))
    floor: float = field(default=1e-4, metadata=_check(minimum=0))
    no_return: bool = True


@dataclass(frozen=True)
class KernelConfig:
    """Features, Σ and its inverse (note §3)."""

    features: str = field(default="start", metadata=_check(choices=("start", "full")))
    normalise: str = field(default="pre", metadata=_check(choices=("pre", "none")))
    sigma: str = field(default="monte_carlo", metadata=_check(choices=("monte_carlo", "exact")))
    n_sigma: int = field(default=10_000, metadata=_check(minimum=1))
    ridge: float = field(default=1e-6, metadata=_check(minimum=0))


@dataclass(frozen=True)
class TheoryConfig:
    """The whole Table 3 experiment; ``TheoryConfig.from_dict(config["theory"])``."""

    seed: int = field(default=0, metadata=_check(minimum=0))
    n_hmms: int = field(default=32, metadata=_check(minimum=1))
    n_prompts: int = field(default=125, metadata=_check(minimum=1))
    n_demos: tuple[int, ...] = field(default=(1, 2, 4, 8, 16, 32, 64, 128), metadata=_check(minimum=1))
    hmm: HMMConfig = HMMConfig()
    kernel: KernelConfig = KernelConfig()

    def __post_init__(self):
        if len(set(self.n_demos)) != len(self.n_demos):
            raise ValueError(f"config key theory.n_demos: {list(self.n_demos)} has repeated values")
        n_prefixes = self.hmm.n_tokens**self.hmm.x_len
        if self.kernel.sigma == "exact" and n_prefixes > MAX_EXACT_PREFIXES:
            raise ValueError(
                f"config key theory.kernel.sigma: exact enumeration of n_tokens^x_len = {n_prefixes} prefixes "
                f"exceeds {MAX_EXACT_PREFIXES}; use monte_carlo"
            )

    @classmethod
    def from_dict(cls, values: dict | None, prefix: str = "theory") -> TheoryConfig:
        """Build from a (possibly partial) dict; raise ValueError naming the config key on bad input."""
        return _from_dict(cls, values or {}, prefix)

    def to_dict(self) -> dict:
        return _to_plain(dataclasses.asdict(self))


def _to_plain(value):
    if isinstance(value, dict):
        return {key: _to_plain(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return [_to_plain(item) for item in value]
    return value


def _from_dict(cls, values: dict, prefix: str):
    if not isinstance(values, dict):
        raise ValueError(f"config key {prefix}: expected a mapping, got {values!r}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"config key {prefix}.{unknown[0]}: unknown key (allowed: {', '.join(known)})")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        key, hint, checks = f"{prefix}.{name}", hints[name], known[name].metadata
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _from_dict(hint, value, key)
        elif typing.get_origin(hint) is tuple:
            if not isinstance(value, (list, tuple)) or not value:
                raise ValueError(f"config key {key}: expected a non-empty list of integers, got {value!r}")
            kwargs[name] = tuple(_checked_scalar(f"{key}[{i}]", item, int, checks) for i, item in enumerate(value))
        else:
            kwargs[name] = _checked_scalar(key, value, hint, checks)
    return cls(**kwargs)


def _checked_scalar(key: str, value, kind, checks: dict):
    if isinstance(kind, types.UnionType):
        raise TypeError(f"unsupported config type for {key}")
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise ValueError(f"config key {key}: {value!r} is not of type {kind.__name__}")
    if checks.get("choices") is not None and value not in checks["choices"]:
        raise ValueError(f"config key {key}: {value!r} is not one of {list(checks['choices'])}")
    if checks.get("minimum") is not None and value < checks["minimum"]:
        raise ValueError(f"config key {key}: {value!r} is less than the minimum of {checks['minimum']}")
    if checks.get("exclusive_minimum") is not None and value <= checks["exclusive_minimum"]:
        raise ValueError(f"config key {key}: {value!r} must be greater than {checks['exclusive_minimum']}")
    return kind(value) if kind in (int, float) else value


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
def run_table3(config: dict | TheoryConfig) -> pd.DataFrame:
    """Run the experiment; one row per (hmm, method, n) with the prompt-averaged metrics."""
    config = config if isinstance(config, TheoryConfig) else TheoryConfig.from_dict(config)
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

    config = TheoryConfig.from_dict(config)
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
