"""The causal stage (issue 13): ablate the kernel heads and watch the ICL prediction on held-out prompts.

The heads come ranked as data: ``head_ranking.csv`` of the ``causal_ranking`` rule (kicl.analysis.causal, scored
on the ``select`` prompts alone). For each k of ``causal.k``:

* ``top``: the k best heads; ``bottom``: the k worst; ``random``: ``causal.random_draws`` seeded draws of k
  heads with the top-k's layer distribution, never a top-k head (the same number of heads in each layer,
  drawn among that layer's heads outside the top k; a layer with too few of them gives all it has and the
  rest come from the nearest layers, counted in the ``off_layer`` column).
* modes, all at the last real token, where ŷ is read: ``zero`` (the head's output set to zero), ``mean``
  (replaced by its mean last-token output over the first ``causal.mean_prompts`` select prompts),
  ``knockout`` (the last token's attention to the demonstrations' label tokens removed in those heads and
  renormalised over the rest).

An intervention at the last token leaves every earlier position unchanged, so each batch's prefix runs once
(:meth:`kicl.capture.session.CaptureSession.prefill`) and every intervention costs one cached step of one token
per prompt. Output: one CSV row per (intervention, held-out prompt; the first ``causal.n_prompts``) with the
prediction and the label-logit margin (logit of the gold label minus the largest other label logit);
kicl.analysis.causal turns it into paired per-draw effects, a rank p-value and two-level intervals.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from kicl.capture.handlers import AttentionKnockout, HeadAblation, HeadOutputs
from kicl.capture.options import CaptureError, CaptureOptions
from kicl.capture.run import predict
from kicl.capture.session import CAPTURE_ATTENTION, CaptureSession, register_capture_attention
from kicl.config import SectionOptions
from kicl.devices import AUTO_BF16
from kicl.fileio import write_csv_atomic
from kicl.prompts.files import read_prompt_set
from kicl.store.heads import HeadId

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CausalOptions(SectionOptions):
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

    SECTION = "causal"

    @classmethod
    def build(cls, values: dict) -> CausalOptions:
        return cls(**values | {key: tuple(values[key]) for key in ("tasks", "k", "modes")})


RANKINGS = ("top", "random", "bottom")
#: the columns of head_ranking.csv the causal stage reads (kicl.analysis.causal.RANKING_COLUMNS)
RANKING_NEEDS = ("rank", "layer", "head", "pooling", "rank_by")


@dataclass(frozen=True)
class Intervention:
    """One head set ablated in one mode: ``ranking`` top, bottom or random (draw ``draw``) of size ``k``."""

    mode: str
    ranking: str
    k: int
    draw: int
    heads: tuple[tuple[int, int], ...]
    off_layer: int = 0  # random draws: heads drawn outside their layer (it had too few heads outside the top-k)


@dataclass(frozen=True)
class Ranking:
    """Every head of the model, best first, as the causal_ranking rule wrote them; ``shape``: (layers, heads)."""

    heads: tuple[tuple[int, int], ...]
    shape: tuple[int, int]
    pooling: str
    rank_by: str


def read_ranking(path) -> Ranking:
    """The head ranking in ``path`` (head_ranking.csv); one row per head of the model, any order of rows."""
    frame = pd.read_csv(path)
    missing = [c for c in RANKING_NEEDS if c not in frame.columns]
    if missing or frame.empty:
        raise CaptureError(f"{path}: a head ranking needs the columns {list(RANKING_NEEDS)} and rows; lacks {missing}")
    frame = frame.sort_values("rank", kind="stable")
    heads = tuple((int(layer), int(head)) for layer, head in zip(frame["layer"], frame["head"]))
    shape = (int(frame["layer"].max()) + 1, int(frame["head"].max()) + 1)
    if len(set(heads)) != len(heads) or len(heads) != shape[0] * shape[1]:
        raise CaptureError(f"{path}: the ranking does not list each of the {shape[0]} x {shape[1]} heads once")
    return Ranking(heads, shape, str(frame["pooling"].iloc[0]), str(frame["rank_by"].iloc[0]))


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


def interventions(ranking: Ranking, ks, modes, random_draws: int, seed: int) -> list[Intervention]:
    """Every (mode, ranking, k, draw) with its heads; random draws use Generator([seed, k, draw]) and never
    contain a top-k head."""
    (n_layers, n_heads), ranked = ranking.shape, list(ranking.heads)
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
            out += [Intervention(mode, r, k, d, tuple(sorted(h)), off) for r, d, h, off in sets]
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


@dataclass(frozen=True)
class CausalFiles:
    """The files of one causal_ablation job: its prompt set, model manifest, forward store and head ranking
    (inputs), and the per-prompt and head-set CSVs it writes."""

    meta: Path
    prompts: Path
    model: Path
    store: Path
    ranking: Path
    prompts_csv: Path
    heads_csv: Path


def _prompt_splits(prompts, ds, files: CausalFiles, n_prompts, where: str):
    """(select, held-out) prompt indices, after checking that the store was made from these prompts; the
    held-out ones cut to the first ``n_prompts`` (None: all)."""
    if ds.sizes["prompt"] != len(prompts) or not np.array_equal(
        ds["length"].values, [len(p["input_ids"]) for p in prompts]
    ):
        raise CaptureError(f"{where}: the forward store {files.store} was not made from {files.prompts}")
    split = np.array([p.get("split", "") for p in prompts])
    select, heldout = np.flatnonzero(split == "select"), np.flatnonzero(split == "heldout")
    if not len(select) or not len(heldout):
        raise CaptureError(f"{where}: the causal test needs select and heldout prompts (protocol.n_select/n_heldout)")
    return select, (heldout if n_prompts is None else heldout[:n_prompts])


def _mean_outputs(session, prompts, rows, size: int, padding_side: str) -> np.ndarray:
    """Each head's mean last-token output over the prompts ``rows`` (the ``mean`` mode's replacement)."""
    outputs, total = HeadOutputs(), None
    session.handlers = [outputs]
    for batch in _batches(rows, prompts, size):
        session.run([prompts[i]["input_ids"] for i in batch], padding_side)
        part = outputs.outputs.double().sum(0)
        total = part if total is None else total + part
    return (total / len(rows)).float().numpy()


def _ablated_logits(session, prompts, heldout, plan, means, label_ids, size: int):
    """Label logits of the held-out prompts without ablation and under each intervention of ``plan``, each
    batch's prefix run once. Returns (baseline, intervention -> logits, seconds spent on prefixes)."""
    handlers = {}
    for c in plan:
        if c.mode == "knockout":
            handlers[c] = AttentionKnockout(c.heads)
        else:
            handlers[c] = HeadAblation(c.heads, c.mode, means=means, rows="last")
    logits = {c: np.empty((len(heldout), len(label_ids)), np.float32) for c in plan}
    baseline = np.empty((len(heldout), len(label_ids)), np.float32)
    slot = {int(p): i for i, p in enumerate(heldout)}
    prefill_seconds = 0.0
    for batch in _batches(heldout, prompts, size):
        rows = [slot[i] for i in batch]
        session.handlers = []
        tick = time.perf_counter()
        prefix = session.prefill([prompts[i]["input_ids"] for i in batch])
        prefill_seconds += time.perf_counter() - tick
        baseline[rows] = session.step(prefix).cpu()[:, label_ids].numpy()
        label_pos = [[d["label_pos"] for d in prompts[i]["demos"]] for i in batch]
        for c in plan:
            handler = handlers[c]
            if c.mode == "knockout":
                handler.set_positions(label_pos)
            session.handlers = [handler]
            logits[c][rows] = session.step(prefix).cpu()[:, label_ids].numpy()
    return baseline, logits, prefill_seconds


def _check_no_ablation(baseline, store_logits, heldout, dtype: str, where: str) -> float:
    """The largest |cached step without ablation − store's label_logits| over the held-out prompts; a
    CaptureError when the store does not belong to this model."""
    diff = float(np.abs(baseline - store_logits[heldout]).max())
    # the cached step and the store's full pass agree to float32 rounding, or to bfloat16/float16 rounding of
    # logits of this size (a store of another model or prompt set differs by whole units)
    relative = 1e-2 if dtype == "float32" else 5e-2
    if not diff <= relative * max(1.0, float(np.abs(store_logits).max())):
        raise CaptureError(
            f"{where}: without ablation the cached step differs from the store's label_logits by "
            f"{diff:.3g}; the store does not belong to this model"
        )
    return diff


def prompt_frame(baseline, logits: dict, heldout, gold) -> pd.DataFrame:
    """One row per (intervention, held-out prompt), the no-ablation rows first (mode and ranking ``none``)."""
    # ablations are compared with the same cached step without ablation (not the store's full pass), so that the
    # rounding difference of the two computations in a low-precision dtype counts as no flip
    base_pred = predict(baseline)
    base_margin = margins(baseline, gold)
    frames = []
    for c, values in [(Intervention("none", "none", 0, 0, ()), baseline)] + list(logits.items()):
        pred = predict(values)
        frames.append(pd.DataFrame({
            "mode": c.mode, "ranking": c.ranking, "k": c.k, "draw": c.draw, "prompt": heldout, "gold": gold,
            "base_pred": base_pred, "pred": pred, "correct": (pred == gold).astype(int),
            "flipped": (pred != base_pred).astype(int), "margin": margins(values, gold),
            "margin_change": margins(values, gold) - base_margin, "off_layer": c.off_layer,
        }))  # fmt: skip
    return pd.concat(frames, ignore_index=True)


def heads_frame(plan, ranking: Ranking, diff: float, seconds: dict) -> pd.DataFrame:
    """One row per head set of the first mode (the sets are the same in every mode), with the ranking it came
    from, the no-ablation check and the timings (``seconds``: means, prefixes, per_intervention)."""
    first = plan[0].mode if plan else None
    heads = pd.DataFrame(
        [{"mode": c.mode, "ranking": c.ranking, "k": c.k, "draw": c.draw, "off_layer": c.off_layer,
          "heads": " ".join(HeadId(*h).label for h in c.heads)} for c in plan if c.mode == first]
    )  # fmt: skip
    heads["pooling"], heads["rank_by"], heads["no_ablation_max_abs_diff"] = ranking.pooling, ranking.rank_by, diff
    heads["seconds_means"], heads["seconds_prefixes"] = round(seconds["means"], 2), round(seconds["prefixes"], 2)
    heads["seconds_per_condition"] = round(seconds["per_intervention"], 3)
    return heads


def run_causal_ablation(
    files: CausalFiles, causal: dict | None = None, capture: dict | None = None, threads: int | None = None
) -> pd.DataFrame:
    """Run every intervention on the held-out prompts of one (model, task); write the per-prompt CSV and the
    head sets (``files``). ``causal``/``capture``: the config sections (defaults from the schema). Returns the
    per-prompt frame."""
    from kicl.data.models import load_model, read_manifest
    from kicl.store.reader import open_store

    settings = CausalOptions.from_config({"causal": causal or {}})
    modes = list(settings.modes)
    manifest = read_manifest(files.model)
    options = CaptureOptions.from_config(capture or {}, manifest)
    meta, prompts = read_prompt_set(files.meta, files.prompts)
    where = f"task {meta.get('task')!r}, model {meta.get('model')!r}"
    ds = open_store(files.store, needs=["gold", "split", "label_logits"])
    select, heldout = _prompt_splits(prompts, ds, files, settings.n_prompts, where)
    if options.dtype == AUTO_BF16:  # dtype auto: the dtype the forward pass settled on (kicl.capture.dtype_check)
        options = replace(options, dtype=ds.attrs.get("capture", {}).get("dtype", "float32"))
    ranking = read_ranking(files.ranking)
    if ranking.shape != (ds.sizes["layer"], ds.sizes["head"]):
        raise CaptureError(f"{where}: the head ranking {files.ranking} has {ranking.shape} (layers, heads), "
                           f"the forward store {files.store} {(ds.sizes['layer'], ds.sizes['head'])}")  # fmt: skip
    plan = interventions(ranking, settings.k, modes, settings.random_draws, settings.seed)
    label_ids = torch.as_tensor(meta["label_token_ids"], dtype=torch.long)
    options.fix_threads(threads)
    register_capture_attention()
    model = load_model(manifest, dtype=options.dtype, device=options.device, attn_implementation=CAPTURE_ATTENTION)
    started, size, means = time.perf_counter(), settings.batch_size, None
    mean_from = select if settings.mean_prompts is None else select[: settings.mean_prompts]
    with CaptureSession(model) as session:
        if "mean" in modes:
            means = _mean_outputs(session, prompts, mean_from, size, options.padding_side)
            log.info("%s: mean head outputs over %d select prompts in %.1f s", where, len(mean_from),
                     time.perf_counter() - started)  # fmt: skip
        mean_seconds = time.perf_counter() - started
        baseline, logits, prefill_seconds = _ablated_logits(session, prompts, heldout, plan, means, label_ids, size)
    seconds = time.perf_counter() - started
    diff = _check_no_ablation(baseline, ds["label_logits"].values, heldout, options.dtype, where)
    step_seconds = seconds - mean_seconds - prefill_seconds
    log.info(
        "%s: %.1f s in all: means %.1f s, prefixes %.1f s, %d interventions x %d held-out prompts %.1f s "
        "(%.2f s per intervention); |no-ablation step - store| <= %.2e",
        where, seconds, mean_seconds, prefill_seconds, len(plan), len(heldout), step_seconds,
        step_seconds / max(1, len(plan)), diff,
    )  # fmt: skip
    frame = prompt_frame(baseline, logits, heldout, ds["gold"].values[heldout])
    frame.attrs["seconds"] = seconds
    write_csv_atomic(frame, files.prompts_csv, index=False, float_format="%.6g")
    timings = {"means": mean_seconds, "prefixes": prefill_seconds, "per_intervention": step_seconds / max(1, len(plan))}
    write_csv_atomic(heads_frame(plan, ranking, diff, timings), files.heads_csv, index=False)
    return frame
