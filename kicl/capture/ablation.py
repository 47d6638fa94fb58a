"""The causal test of the kernel heads (issue 13): ablate heads and watch the ICL prediction on held-out prompts.

Heads are ranked on the ``select`` prompts alone (never the held-out ones the ablation is scored on) by how
well their kernel-regression reconstruction ỹ (one pooling) matches ŷ: raw agreement (the paper's Fig 3 score)
or Cohen's κ (``causal.rank_by``). For each k of ``causal.k``:

* ``top``: the k best heads; ``bottom``: the k worst; ``random``: ``causal.random_draws`` seeded draws of k
  heads with the top-k's layer distribution, never a top-k head (the same number of heads in each layer,
  drawn among that layer's heads outside the top k; a layer with too few of them gives all it has and the
  rest come from the nearest layers, counted in the ``off_layer`` column).
* modes, all at the last real token, where ŷ is read: ``zero`` (the head's output set to zero), ``mean``
  (replaced by its mean last-token output over the first ``causal.mean_prompts`` select prompts),
  ``knockout`` (the last token's attention to the demonstrations' label tokens removed in those heads and
  renormalised over the rest).

An intervention at the last token leaves every earlier position unchanged, so each batch's prefix runs once
(:meth:`kicl.capture.session.CaptureSession.prefill`) and every condition costs one cached step of one token
per prompt. Output: one CSV row per (condition, held-out prompt; the first ``causal.n_prompts``) with the
prediction and the label-logit margin (logit of the gold label minus the largest other label logit);
kicl.analysis.ablation turns it into paired per-draw effects, a rank p-value and two-level intervals.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch

from kicl.capture.handlers import AttentionKnockout, HeadAblation, HeadOutputs
from kicl.capture.options import AUTO_BF16, CaptureError, CaptureOptions
from kicl.capture.run import predict, read_prompts
from kicl.capture.session import CAPTURE_ATTENTION, CaptureSession, register_capture_attention
from kicl.config import schema_enum, section_values
from kicl.fileio import atomic_path

log = logging.getLogger(__name__)

RANKINGS = ("top", "random", "bottom")
RANK_BY = schema_enum("causal", "rank_by")


@dataclass(frozen=True)
class CausalOptions:
    """The ``causal:`` config section: schema defaults, checked against the schema (meanings there)."""

    tasks: tuple[str, ...]
    k: tuple[int, ...]
    modes: tuple[str, ...]
    random_draws: int
    seed: int
    pooling: str
    rank_by: str
    n_prompts: int | None
    batch_size: int
    mean_prompts: int | None

    @classmethod
    def from_config(cls, config: dict) -> CausalOptions:
        """The ``causal`` section of ``config``; raises :class:`~kicl.config.ConfigError` listing every problem."""
        values = section_values(config, "causal")
        return cls(**values | {key: tuple(values[key]) for key in ("tasks", "k", "modes")})


@dataclass(frozen=True)
class Condition:
    mode: str
    ranking: str
    k: int
    draw: int
    heads: tuple[tuple[int, int], ...]
    off_layer: int = 0  # random draws: heads drawn outside their layer (it had too few heads outside the top-k)


def rank_heads(scores: np.ndarray) -> list[tuple[int, int]]:
    """(layer, head) from the highest score to the lowest; ties in (layer, head) order."""
    n_layers, n_heads = scores.shape
    flat = np.asarray(scores, dtype=np.float64).reshape(-1)
    order = np.lexsort((np.arange(flat.size), -flat))
    return [(int(i // n_heads), int(i % n_heads)) for i in order]


def cohen_kappa(y_tilde: np.ndarray, y_hat: np.ndarray) -> np.ndarray:
    """Cohen's κ of each head's ỹ (P, ...) against ŷ (P,): agreement beyond what the two label marginals give
    by chance (0 when ŷ or ỹ is constant), so a head that always names the majority label scores 0."""
    y_tilde, y_hat = np.asarray(y_tilde), np.asarray(y_hat)
    labels = np.union1d(np.unique(y_tilde), np.unique(y_hat))
    hat = y_hat.reshape((-1,) + (1,) * (y_tilde.ndim - 1))
    observed = (y_tilde == hat).mean(0)
    chance = sum((y_tilde == y).mean(0) * (y_hat == y).mean() for y in labels)
    with np.errstate(divide="ignore", invalid="ignore"):
        kappa = (observed - chance) / (1 - chance)
    return np.where(chance < 1, kappa, 0.0)


def head_scores(ds, select, pooling: str, rank_by: str) -> np.ndarray:
    """(layer, head) ranking scores of the ``select`` prompts alone: raw agreement of ỹ with ŷ (the paper's
    Fig 3 score) or Cohen's κ against ŷ."""
    from kicl.analysis.reconstruction import head_predictions

    select = np.sort(np.asarray(select, dtype=int))
    y_tilde = head_predictions(ds, select, [pooling])[:, 0]
    y_hat = ds["prediction"].values[select]
    if rank_by == "agreement":
        return (y_tilde == y_hat[:, None, None]).mean(0)
    if rank_by == "kappa":
        return cohen_kappa(y_tilde, y_hat)
    raise CaptureError(f"causal.rank_by: {rank_by!r} is not one of {RANK_BY}")


def layer_matched_draw(
    chosen, n_heads: int, rng: np.random.Generator, n_layers: int | None = None
) -> tuple[list[tuple[int, int]], int]:
    """As many heads per layer as ``chosen`` has there, drawn uniformly among that layer's heads outside
    ``chosen``; a layer with too few of them gives all it has and the rest come from the nearest layers (lower
    first at equal distance) that still have heads outside ``chosen``. Never a head of ``chosen``.
    ``n_layers``: the model's layers (default: up to the last layer of ``chosen``). Returns (heads, how many
    were drawn outside their layer)."""
    chosen = set(chosen)
    n_layers = n_layers or 1 + max(layer for layer, _ in chosen)
    free = {layer: [h for h in range(n_heads) if (layer, h) not in chosen] for layer in range(n_layers)}
    per_layer: dict[int, int] = {}
    for layer, _ in chosen:
        per_layer[layer] = per_layer.get(layer, 0) + 1
    drawn, short = [], []
    for layer in sorted(per_layer):
        need, pool = per_layer[layer], free[layer]
        take = rng.choice(pool, size=min(need, len(pool)), replace=False).tolist()
        drawn += [(layer, int(h)) for h in take]
        free[layer] = [h for h in pool if h not in take]
        short += [layer] * (need - len(take))
    for layer in short:
        near = sorted((layer_ for layer_ in free if free[layer_]), key=lambda other: (abs(other - layer), other))
        if not near:
            raise CaptureError(f"causal.k: {len(chosen)} heads leave too few other heads for a random draw")
        head = int(rng.choice(free[near[0]]))
        free[near[0]].remove(head)
        drawn.append((near[0], head))
    return sorted(drawn), len(short)


def conditions(scores: np.ndarray, ks, modes, random_draws: int, seed: int) -> list[Condition]:
    """Every (mode, ranking, k, draw) with its heads; random draws use Generator([seed, k, draw]) and never
    contain a top-k head."""
    n_layers, n_heads = scores.shape
    ranked = rank_heads(scores)
    out = []
    for k in ks:
        if not 1 <= k <= len(ranked) // 2:
            raise CaptureError(
                f"causal.k: {k} is not between 1 and half the model's {len(ranked)} heads "
                "(random draws take k heads outside the top k)"
            )
        sets = [("top", 0, ranked[:k], 0), ("bottom", 0, ranked[::-1][:k], 0)]
        for draw in range(random_draws):
            rng = np.random.default_rng([seed, k, draw])
            heads, off_layer = layer_matched_draw(ranked[:k], n_heads, rng, n_layers)
            sets.append(("random", draw, heads, off_layer))
        for mode in modes:
            out += [Condition(mode, r, k, d, tuple(sorted(h)), off) for r, d, h, off in sets]
    return out


def margins(label_logits: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """Logit of the gold label minus the largest other label logit (float64)."""
    logits = np.asarray(label_logits, dtype=np.float64)
    rows = np.arange(len(logits))
    others = logits.copy()
    others[rows, gold] = -np.inf
    return logits[rows, gold] - others.max(axis=1)


def _batches(indices, prompts, size):
    order = sorted(indices, key=lambda i: -len(prompts[i]["input_ids"]))
    return [order[i : i + size] for i in range(0, len(order), size)]


def run_ablation(
    meta_path,
    prompts_path,
    manifest,
    store_path,
    out_csv,
    heads_csv,
    causal: dict | None = None,
    capture: dict | None = None,
    threads: int | None = None,
) -> pd.DataFrame:
    """Run every condition on the held-out prompts of one (model, task); write the per-prompt CSV and the heads.

    ``causal``/``capture``: the config sections (defaults from the schema). Returns the per-prompt frame.
    """
    from kicl.data.models import load_model, read_manifest
    from kicl.store.reader import open_store

    settings = CausalOptions.from_config({"causal": causal or {}})
    modes = list(settings.modes)
    manifest = read_manifest(manifest)
    options = CaptureOptions.from_config(capture or {}, manifest)
    meta, prompts = read_prompts(meta_path, prompts_path)
    where = f"task {meta.get('task')!r}, model {meta.get('model')!r}"
    ds = open_store(store_path, needs=["kernel_weight", "demo_label", "prediction", "gold", "split", "label_logits"])
    if ds.sizes["prompt"] != len(prompts) or not np.array_equal(
        ds["length"].values, [len(p["input_ids"]) for p in prompts]
    ):
        raise CaptureError(f"{where}: the forward store {store_path} was not made from {prompts_path}")
    split = np.array([p.get("split", "") for p in prompts])
    select, heldout = np.flatnonzero(split == "select"), np.flatnonzero(split == "heldout")
    if not len(select) or not len(heldout):
        raise CaptureError(f"{where}: the causal test needs select and heldout prompts (protocol.n_select/n_heldout)")
    if settings.n_prompts is not None:
        heldout = heldout[: settings.n_prompts]
    if options.dtype == AUTO_BF16:  # dtype auto: the dtype the forward pass settled on (kicl.capture.dtype_check)
        options = replace(options, dtype=ds.attrs.get("capture", {}).get("dtype", "float32"))
    pooling = settings.pooling
    scores = head_scores(ds, select, pooling, settings.rank_by)  # select prompts only: no held-out leak
    conds = conditions(scores, settings.k, modes, settings.random_draws, settings.seed)
    store_logits = ds["label_logits"].values
    label_ids = torch.as_tensor(meta["label_token_ids"], dtype=torch.long)
    options.fix_threads(threads)
    register_capture_attention()
    model = load_model(manifest, dtype=options.dtype, device=options.device, attn_implementation=CAPTURE_ATTENTION)
    started = time.perf_counter()
    size = settings.batch_size
    means = None
    mean_from = select if settings.mean_prompts is None else select[: settings.mean_prompts]
    with CaptureSession(model) as session:
        if "mean" in modes:
            outputs, total = HeadOutputs(), None
            session.handlers = [outputs]
            for batch in _batches(mean_from, prompts, size):
                session.run([prompts[i]["input_ids"] for i in batch], options.padding_side)
                part = outputs.outputs.double().sum(0)
                total = part if total is None else total + part
            means = (total / len(mean_from)).float().numpy()
            log.info(
                "%s: mean head outputs over %d select prompts in %.1f s",
                where,
                len(mean_from),
                time.perf_counter() - started,
            )
        handlers = {}
        for c in conds:
            if c.mode == "knockout":
                handlers[c] = AttentionKnockout(c.heads)
            else:
                handlers[c] = HeadAblation(c.heads, c.mode, means=means, rows="last")
        logits = {c: np.empty((len(heldout), len(label_ids)), np.float32) for c in conds}
        baseline = np.empty((len(heldout), len(label_ids)), np.float32)
        slot = {int(p): i for i, p in enumerate(heldout)}
        mean_seconds, prefill_seconds = time.perf_counter() - started, 0.0
        for batch in _batches(heldout, prompts, size):
            rows = [slot[i] for i in batch]
            session.handlers = []
            tick = time.perf_counter()
            prefix = session.prefill([prompts[i]["input_ids"] for i in batch])
            prefill_seconds += time.perf_counter() - tick
            baseline[rows] = session.step(prefix).cpu()[:, label_ids].numpy()
            label_pos = [[d["label_pos"] for d in prompts[i]["demos"]] for i in batch]
            for c in conds:
                handler = handlers[c]
                if c.mode == "knockout":
                    handler.set_positions(label_pos)
                session.handlers = [handler]
                logits[c][rows] = session.step(prefix).cpu()[:, label_ids].numpy()
    seconds = time.perf_counter() - started
    diff = float(np.abs(baseline - store_logits[heldout]).max())
    step_seconds = seconds - mean_seconds - prefill_seconds
    log.info(
        "%s: %.1f s in all: means %.1f s, prefixes %.1f s, %d conditions x %d held-out prompts %.1f s "
        "(%.2f s per condition); |no-ablation step - store| <= %.2e",
        where,
        seconds,
        mean_seconds,
        prefill_seconds,
        len(conds),
        len(heldout),
        step_seconds,
        step_seconds / max(1, len(conds)),
        diff,
    )
    # the cached step and the store's full pass agree to float32 rounding, or to bfloat16/float16 rounding of
    # logits of this size (a store of another model or prompt set differs by whole units)
    relative = 1e-2 if options.dtype == "float32" else 5e-2
    if not diff <= relative * max(1.0, float(np.abs(store_logits).max())):
        raise CaptureError(
            f"{where}: without ablation the cached step differs from the store's label_logits by "
            f"{diff:.3g}; the store does not belong to this model"
        )
    gold = ds["gold"].values[heldout]
    # ablations are compared with the same cached step without ablation (not the store's full pass), so that the
    # rounding difference of the two computations in a low-precision dtype counts as no flip
    base_pred = predict(baseline)
    base_margin = margins(baseline, gold)
    frames = []
    for c, values in [(Condition("none", "none", 0, 0, ()), baseline)] + list(logits.items()):
        pred = predict(values)
        frames.append(pd.DataFrame({
            "mode": c.mode, "ranking": c.ranking, "k": c.k, "draw": c.draw, "prompt": heldout, "gold": gold,
            "base_pred": base_pred, "pred": pred, "correct": (pred == gold).astype(int),
            "flipped": (pred != base_pred).astype(int), "margin": margins(values, gold),
            "margin_change": margins(values, gold) - base_margin, "off_layer": c.off_layer,
        }))  # fmt: skip
    frame = pd.concat(frames, ignore_index=True)
    frame.attrs["seconds"] = seconds
    with atomic_path(out_csv) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g")
    heads = pd.DataFrame(
        [{"mode": c.mode, "ranking": c.ranking, "k": c.k, "draw": c.draw, "off_layer": c.off_layer,
          "heads": " ".join(f"L{layer}H{head}" for layer, head in c.heads)} for c in conds if c.mode == modes[0]]
    )  # fmt: skip
    heads["pooling"], heads["rank_by"], heads["no_ablation_max_abs_diff"] = pooling, settings.rank_by, diff
    heads["seconds_means"], heads["seconds_prefixes"] = round(mean_seconds, 2), round(prefill_seconds, 2)
    heads["seconds_per_condition"] = round(step_seconds / max(1, len(conds)), 3)
    with atomic_path(heads_csv) as tmp:
        heads.to_csv(tmp, index=False)
    return frame
