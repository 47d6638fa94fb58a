"""The pre-trained transformer's ICL against ground truth on the label world, for each number of demonstrations n.

One fixed set of test points (task θ* ~ U(K), a test input of the world's x_len, its sampled label and
max(n) demonstrations from θ*) is shared by every n (nested prefixes). For each n the prompt is
``| x_1 -> y_1 | … x_n -> y_n | x_test ->`` (exactly what the chain's template builds), and the methods are:

* ``transformer``: next-token distribution at the marker restricted to the C label tokens (renormalised);
* ``exact_posterior``: P(y | prompt) by the forward algorithm (Bayes-optimal for the pre-training distribution);
* ``task_known``: P(y | x_test, θ*), the ceiling;
* ``kernel_regression``: Eq. 6, ŷ = (1/n) Σ_i K(x_i, x_test) e(y_i), K = φᵀ Σ⁻¹ φ, clip-normalised;
* ``head_vote``: the selected head's attention reconstruction, ỹ = argmax_c Σ_i a_i 1[y_i = c] with a_i the max
  last-row attention over demo i's span (x_i … y_i); the head (layer, head, over all n ≥ 1) is chosen by agreement
  with the transformer's prediction on the ``select`` prompts and scored on the ``heldout`` prompts;
* ``position_only``: the selected head's position profile without its content, ỹ = argmax_c Σ_i w̄_i 1[y_i = c]
  with w̄_i the head's mean a_i at slot i over the ``select`` prompts (per n): what the head's vote would give if
  its weights depended on position only;
* ``label_frequency`` (argmax = majority vote of the demo labels) and ``last_demo_label``: attention-free baselines.

Metrics on the held-out prompts: ``acc_sampled`` (argmax = sampled y_test), ``acc_expected``
(E P(argmax | x_test, θ*), same target with less variance), ``agree_posterior`` (argmax = exact-posterior
argmax), ``agree_transformer`` and ``l1_posterior`` (‖p − P(· | prompt)‖₁, for methods with a distribution), each
with its percentile-bootstrap interval (``{metric}_low``, ``{metric}_high``; ``eval.n_boot`` resamples of the held-out
prompts at ``eval.level``, the same resamples for every method and n, :func:`kicl.analysis.stats.bootstrap_mean`).

Seeds: the world, the test points and the pre-training corpus draw from the children of one
``SeedSequence(seed).spawn(3)`` (:func:`kicl.theory.icl_world.seeded_stream`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from kicl.analysis.stats import bootstrap_mean
from kicl.fileio import write_csv_atomic, write_text_atomic
from kicl.store.heads import HeadId
from kicl.theory.icl_options import TheoryICLOptions
from kicl.theory.icl_world import (
    DELIMITER,
    MARKER,
    LabelWorld,
    demo_log_likelihood,
    forward_joint,
    joint_likelihood,
    kernel_features,
    sample_examples,
    second_moment,
    seeded_stream,
    world_from_config,
)
from kicl.theory.kernel import clip_normalise, kernel_to_test, prefix_label_sums, regularised_inverse
from kicl.theory.posterior import oracle_predictive, posterior_from_weights

log = logging.getLogger(__name__)

METHODS = ("transformer", "exact_posterior", "task_known", "kernel_regression", "head_vote", "position_only",
           "label_frequency", "last_demo_label")  # fmt: skip
#: methods that give a label, not a distribution (no l1_posterior)
LABEL_ONLY = ("head_vote", "position_only", "last_demo_label")
METRICS = ("acc_sampled", "acc_expected", "agree_posterior", "agree_transformer", "l1_posterior")


def draw_test_points(world: LabelWorld, n_points: int, x_len: int, max_demos: int, seed: int) -> dict:
    """Tasks, test inputs/labels and max_demos demonstrations per test point (numpy arrays)."""
    rng = seeded_stream(seed, "test_points")
    tasks = rng.integers(0, world.n_tasks, size=n_points)
    test_x, test_y = sample_examples(world, tasks, x_len, rng)
    demo_x, demo_y = sample_examples(world, np.repeat(tasks, max_demos), x_len, rng)
    return {"tasks": tasks, "test_x": test_x, "test_y": test_y,
            "demo_x": demo_x.reshape(n_points, max_demos, x_len),
            "demo_y": demo_y.reshape(n_points, max_demos)}  # fmt: skip


def prompt_ids(world: LabelWorld, demo_x: np.ndarray, demo_y: np.ndarray, test_x: np.ndarray) -> tuple:
    """Token ids (P, T) of the prompts with the given demos (P, n, k) and the span starts of each demo (n,)."""
    n_points, n, k = demo_x.shape
    block = np.concatenate([world.content_ids(demo_x), np.full((n_points, n, 1), MARKER),
                            (world.label_ids()[demo_y])[..., None], np.full((n_points, n, 1), DELIMITER)],
                           axis=-1)  # fmt: skip
    ids = np.concatenate([np.full((n_points, 1), DELIMITER), block.reshape(n_points, -1),
                          world.content_ids(test_x), np.full((n_points, 1), MARKER)], axis=1)  # fmt: skip
    starts = 1 + np.arange(n) * (k + 3)
    return ids, starts


def transformer_outputs(model, world: LabelWorld, ids: np.ndarray, starts: np.ndarray, x_len: int,
                        batch_size: int = 100) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Label distribution (P, C) at the last position and per-head demo weights a_i (P, L, H, n)."""
    import torch

    probabilities, weights = [], []
    label_ids = torch.as_tensor(world.label_ids())
    with torch.no_grad():
        for begin in range(0, ids.shape[0], batch_size):
            batch = torch.as_tensor(ids[begin : begin + batch_size])
            out = model(input_ids=batch, output_attentions=True)
            logits = out.logits[:, -1, :].float()[:, label_ids]
            probabilities.append(torch.softmax(logits, dim=-1).numpy())
            last_rows = torch.stack([layer[:, :, -1, :] for layer in out.attentions], dim=1).float().numpy()
            if starts.size:
                spans = np.stack([last_rows[..., s : s + x_len + 2].max(axis=-1) for s in starts], axis=-1)
            else:
                spans = np.zeros((*last_rows.shape[:3], 0))
            weights.append(spans)
    return np.concatenate(probabilities), np.concatenate(weights)


def _vote(weights: np.ndarray, labels: np.ndarray, n_labels: int) -> np.ndarray:
    """Σ_i w_i e(y_i): weights (..., n), labels broadcastable (..., n) -> (..., C)."""
    one_hot = np.eye(n_labels)[labels]  # (P, n, C)
    return np.einsum("p...n,pnc->p...c", weights, one_hot)


def compare(cfg: TheoryICLOptions, model) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The comparison table (one row per n and method) and the per-head agreement table, from ``theory_icl``."""
    world = world_from_config(cfg.world)
    ev = cfg.eval
    x_len, ns = cfg.world.x_len, sorted(ev.n_demos)
    n_select, n_heldout = ev.n_select, ev.n_heldout
    points = draw_test_points(world, n_select + n_heldout, x_len, max(ns), ev.seed)
    split = np.array(["select"] * n_select + ["heldout"] * n_heldout)
    tasks, test_x, test_y, demo_x, demo_y = (points[k] for k in ("tasks", "test_x", "test_y", "demo_x", "demo_y"))
    test_joint = joint_likelihood(world, forward_joint(world, test_x))  # (P, K, C)
    oracle = oracle_predictive(test_joint, tasks)
    log_lik = demo_log_likelihood(world, demo_x, demo_y)  # (P, N, K)
    cumulative = np.concatenate([np.zeros((len(tasks), 1, world.n_tasks)), np.cumsum(log_lik, axis=1)], axis=1)
    metric = regularised_inverse(second_moment(world, x_len, ev.n_sigma, np.random.default_rng(ev.seed + 1)),
                                 ev.ridge)  # fmt: skip
    kernel = kernel_to_test(kernel_features(world, demo_x), kernel_features(world, test_x), metric)  # (P, N)
    ns_pos = [n for n in ns if n > 0]
    kr_sums = prefix_label_sums(kernel, demo_y, world.n_labels, ns_pos) if ns_pos else None
    per_n = {}
    for n in ns:
        posterior = posterior_from_weights(np.log(world.task_prior) + cumulative[:, n], test_joint)
        ids, starts = prompt_ids(world, demo_x[:, :n], demo_y[:, :n], test_x)
        model_p, attention = transformer_outputs(model, world, ids, starts, x_len, ev.batch_size)
        entry = {"posterior": posterior, "transformer": model_p, "exact_posterior": posterior, "task_known": oracle}
        if n > 0:
            entry["kernel_regression"] = clip_normalise(kr_sums[:, ns_pos.index(n)] / n)
            entry["label_frequency"] = _vote(np.ones((len(tasks), n)), demo_y[:, :n], world.n_labels) / n
            entry["last_demo_label"] = np.eye(world.n_labels)[demo_y[:, n - 1]]
            entry["head_votes"] = _vote(attention, demo_y[:, :n], world.n_labels).argmax(-1)  # (P, L, H)
            entry["attention"] = attention  # (P, L, H, n)
        per_n[n] = entry
    head_rows = _select_head(per_n, ns_pos, split, demo_y, world.n_labels)
    table = _comparison_table(per_n, ns, test_y, oracle, split == "heldout", ev)
    heads = pd.DataFrame(head_rows)
    if not heads.empty:
        selected = heads[heads["selected"]].iloc[0]
        table.attrs["selected_head"] = HeadId(int(selected["layer"]), int(selected["head"])).label
    return table, heads


def _select_head(per_n: dict, ns_pos: list[int], split: np.ndarray, demo_y: np.ndarray, n_labels: int) -> list[dict]:
    """The head whose vote agrees most with the transformer's argmax on the select prompts, pooled over n >= 1;
    adds its vote and the position-only vote of its mean attention profile to `per_n`. Returns the per-head rows."""
    head_rows = []
    if not ns_pos:
        return head_rows
    agreement = np.mean([per_n[n]["head_votes"][split == "select"]
                         == per_n[n]["transformer"].argmax(-1)[split == "select", None, None] for n in ns_pos],
                        axis=(0, 1))  # fmt: skip
    layer, head = np.unravel_index(int(np.argmax(agreement)), agreement.shape)
    log.info("selected head L%dH%d (select-split agreement with the transformer %.3f)", layer, head,
             agreement[layer, head])  # fmt: skip
    for n in ns_pos:
        votes = per_n[n]["head_votes"]
        for split_name in ("select", "heldout"):
            mask = split == split_name
            agree = (votes[mask] == per_n[n]["transformer"].argmax(-1)[mask, None, None]).mean(axis=0)
            for (lay, hd), value in np.ndenumerate(agree):
                head_rows.append({"n": n, "split": split_name, "layer": lay, "head": hd,
                                  "agree_transformer": value, "selected": (lay, hd) == (layer, head)})  # fmt: skip
        per_n[n]["head_vote"] = np.eye(n_labels)[votes[:, layer, head]]
        profile = per_n[n]["attention"][split == "select", layer, head].mean(0)  # (n,) mean a_i per slot
        position_votes = _vote(np.broadcast_to(profile, (len(demo_y), n)), demo_y[:, :n], n_labels)
        per_n[n]["position_only"] = np.eye(n_labels)[position_votes.argmax(-1)]
    return head_rows


def _comparison_table(per_n: dict, ns, test_y, oracle, held: np.ndarray, ev: dict) -> pd.DataFrame:
    """One row per n and method: every metric on the held-out prompts with paired bootstrap intervals."""
    rows, values = [], []
    for n in ns:
        entry = per_n[n]
        truth, model_pred = entry["posterior"].argmax(-1), entry["transformer"].argmax(-1)
        for method in METHODS:
            if method not in entry:
                continue
            p = entry[method]
            pred = p.argmax(-1)
            per_prompt = {
                "acc_sampled": pred == test_y,
                "acc_expected": np.take_along_axis(oracle, pred[:, None], axis=1)[:, 0],
                "agree_posterior": pred == truth,
                "agree_transformer": pred == model_pred,
                "l1_posterior": np.full(len(pred), np.nan)
                if method in LABEL_ONLY
                else np.abs(p - entry["posterior"]).sum(-1),
            }
            rows.append({"n": n, "method": method, "n_prompts": int(held.sum())})
            values.append(np.stack([np.asarray(per_prompt[m], dtype=np.float64)[held] for m in METRICS], axis=1))
    # one set of resamples of the held-out prompts for every method, n and metric (paired intervals)
    mean, low, high = bootstrap_mean(np.stack(values, axis=1), n_boot=ev.n_boot, seed=ev.seed, level=ev.level)
    for r, row in enumerate(rows):
        for m, metric in enumerate(METRICS):
            row.update(
                {metric: float(mean[r, m]), f"{metric}_low": float(low[r, m]), f"{metric}_high": float(high[r, m])}
            )
    table = pd.DataFrame(rows)[
        ["n", "method", "n_prompts", *(f"{m}{s}" for m in METRICS for s in ("", "_low", "_high"))]
    ]
    return table


def markdown_table(table: pd.DataFrame, metric: str) -> str:
    """One metric as a methods × n markdown table, each cell "value [low, high]"."""
    present = [m for m in METHODS if m in set(table["method"])]
    wide = {
        s: table.pivot(index="method", columns="n", values=f"{metric}{s}").reindex(present)
        for s in ("", "_low", "_high")
    }
    header = "| method | " + " | ".join(f"n={n}" for n in wide[""].columns) + " |"
    lines = [header, "|---|" + "---|" * len(wide[""].columns)]
    for method in present:
        cells = " | ".join(
            "–" if np.isnan(v) else f"{v:.3f} [{lo:.2f}, {hi:.2f}]"
            for v, lo, hi in zip(wide[""].loc[method], wide["_low"].loc[method], wide["_high"].loc[method])
        )
        lines.append(f"| {method} | {cells} |")
    return "\n".join(lines)


def run_comparison(
    cfg: TheoryICLOptions, model_dir: str | Path, table_csv, heads_csv, table_md, threads: int = 1
) -> pd.DataFrame:
    """Load the trained model, compare, and write the table (CSV + markdown) and the per-head table."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(max(1, threads))
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager", use_safetensors=True).eval()
    table, heads = compare(cfg, model)
    write_csv_atomic(table, table_csv)
    write_csv_atomic(heads, heads_csv)
    head = table.attrs.get("selected_head", "none")
    parts = [f"# Transformer ICL vs ground truth on the label world (held-out prompts; selected head {head})"]
    for metric in METRICS:
        parts += ["", f"## {metric}", "", markdown_table(table, metric)]
    write_text_atomic(table_md, "\n".join(parts) + "\n")
    return table
