"""The conditions stage's numbers: experimental conditions of one (model, task) compared on the same test points.

Every condition has a forward store, a prompt file, optionally an encoder kernel-regression CSV
(kicl.analysis.encoder_kr) and its effective protocol dict. The conditions are matched by ``test_index`` (the
sets must be identical, with the same split and gold label per test point); every comparison is paired: one
bootstrap resample of the test points (``points``: all test points, or held-out only) and one of the
held-out points are drawn once and applied to every condition, so differences between conditions use the
same resamples. Means get percentile intervals at ``level`` (kicl.analysis.stats); proportions of test points
(ŷ-change rates, shares of changed inputs or of identical demonstrations) get Wilson intervals. A paired difference
of two fixed predictions (Δ accuracy to the reference, the calibration gain: nothing is re-selected) gets the exact
McNemar p-value, and the Δ accuracies of the conditions against the one reference get Holm-adjusted p-values
(``accuracy_diff_p_holm``).

Per condition (``condition_metrics``): ICL accuracy; the paired difference to the reference condition;
the ŷ-change rate (share of test points whose ŷ differs from the reference's); the share of test inputs the
test-input control changed (the prompt records' ``test_input_changed``) and the paired difference on those; the
held-out agreement with ŷ of the head chosen on the reference's ``select`` prompts and of the head re-chosen on
the condition's own ``select`` prompts (both fixed: intervals are conditional on the choice); the attention-free
baselines of kicl.analysis.baselines fitted on the condition's own ``select`` prompts (the position-only kernel is
the reference-chosen head's); encoder-KR accuracy and agreement; the mean encoder cosine of the demonstrations
to the test input (``encoder_similarity``); the agreement of ŷ with the majority shown demonstration label (vote
ties by the ``ties`` rule given); and the share of demonstrations whose shown label differs from their
``true_label`` (measured from the prompt records; a demonstration without ``true_label`` shows its true label, one
with ``true_label: null``, an input from another task, is not counted).

Order groups (``order_groups``): conditions whose protocols differ only in ORDER_KEYS, with the mean pairwise
ŷ-change rate, whether the orderings show the same (pool index, shown label, input) triples, and the change under
a re-drawn demonstration set as reference scale. Curves: the bandwidth curve (``bandwidth_curve``), the label-noise
curve (``label_noise_curve``) and the paper's Table 1 analogue (``table1_analogue``). Plot-free; tables and figures
are kicl.tables.conditions and kicl.figures.conditions.
"""

from __future__ import annotations

import itertools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from kicl.analysis.baselines import demo_label_matrix, fixed_predictions, position_kernel, position_predictions
from kicl.analysis.stats import bootstrap_counts, holm, mcnemar_p, percentile_interval, wilson_interval
from kicl.analysis.votes import reconstruct, resolve_ties
from kicl.prompts.files import read_meta, read_prompt_records
from kicl.store.heads import HeadId
from kicl.store.reader import label_names, open_store, string_values
from kicl.tables.paper import PAPER_TABLE1_SST2, is_sst2, paper_table1_key

log = logging.getLogger(__name__)

#: protocol keys whose change only reorders the same demonstrations (an order group)
ORDER_KEYS = ("order_seed", "demo_order")
#: protocol keys of demonstration selection: the conditions of the bandwidth curve differ from the reference in
#: these only
SELECTION_KEYS = ("demo_strategy", "similarity_band", "retrieval_pool_size", "retrieval_encoder", "dedup_similarity")
#: demonstration strategies that draw the set at random: a condition differing from the reference only in selecting
#: by one of them re-draws the set (the reference scale of order sensitivity)
REDRAW_STRATEGIES = ("random", "class_balanced")
#: protocol keys of the label-noise curve
LABEL_KEYS = ("labels", "label_noise")
#: ``labels`` values on the label-noise curve: gold labels (p = 0), a fraction wrong, every label wrong (p = 1)
GOLD_LABELS = ("gold", None)
NOISY_LABELS = ("noisy",)
ALL_WRONG_LABELS = ("flipped",)
#: ``test_inputs`` values meaning the test inputs are the task's own (None: a protocol without the key)
ORIGINAL_INPUTS = ("original", None)
NEEDS = ["kernel_weight", "demo_label", "prediction", "gold", "split", "test_index"]


class ConditionError(ValueError):
    """Condition inputs that cannot be compared (different test points, stale files); the message names the culprit."""


@dataclass
class Condition:
    """Per-test-point arrays of one condition, rows in the reference condition's test-point order."""

    name: str
    protocol: dict
    test_index: np.ndarray  # (N,)
    split: np.ndarray  # (N,) 'select' | 'heldout'
    gold: np.ndarray
    prediction: np.ndarray  # ŷ
    demo_label: np.ndarray  # (N, D) shown labels, −1 for a missing demonstration
    head_pred: np.ndarray  # (N, M) ỹ of every head (M = layer × head, layer-major) for the pooling
    kernel_weight: np.ndarray  # (N, M, D) of the pooling
    n_layers: int
    n_heads: int
    n_labels: int
    similarity: np.ndarray  # (N,) mean encoder cosine of the prompt's demonstrations to the test input, NaN without
    wrong_labels: np.ndarray  # (N,) wrong shown labels per prompt (NaN where not measurable)
    n_known: np.ndarray  # (N,) demonstrations per prompt with a known true label
    demo_sets: list  # per test point: the sorted pool indices of its demonstrations
    demo_triples: list  # per test point: the sorted (pool_index, shown label, input text) of its demonstrations
    changed: np.ndarray  # (N,) 1 where the test-input control changed the test input, 0 where not, NaN unknown
    encoder: dict = field(default_factory=dict)  # kernel -> (N,) encoder-KR prediction
    calibrated: np.ndarray | None = None  # (N,) ŷ after contextual calibration (stores with label_logits_cf)

    def take(self, order: np.ndarray) -> Condition:
        """The same condition with its test points in `order` (row positions)."""
        per_point = ("test_index", "split", "gold", "prediction", "demo_label", "head_pred", "kernel_weight")
        per_point += ("similarity", "wrong_labels", "n_known", "changed")
        arrays = {name: getattr(self, name)[order] for name in per_point}
        return Condition(
            name=self.name,
            protocol=self.protocol,
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            n_labels=self.n_labels,
            demo_sets=[self.demo_sets[i] for i in order],
            demo_triples=[self.demo_triples[i] for i in order],
            encoder={k: v[order] for k, v in self.encoder.items()},
            calibrated=None if self.calibrated is None else self.calibrated[order],
            **arrays,
        )


def _measured_wrong_labels(records, protocol: dict, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Per prompt: (demonstrations whose shown label differs from ``true_label``, demonstrations with a known true
    label). A demonstration without the key shows its true label; ``true_label: null`` (an input from another
    task) has none and is not counted. Not measurable (NaN) when a label control is configured but no record
    carries ``true_label``."""
    has_truth = any("true_label" in demo for rec in records for demo in rec["demos"])
    if not has_truth and protocol.get("labels") not in GOLD_LABELS:
        log.warning(
            "%s: protocol labels=%r but no demonstration carries 'true_label'; the wrong-label share is not measured",
            where,
            protocol.get("labels"),
        )
        return np.full(len(records), np.nan), np.full(len(records), np.nan)
    wrong, known = np.zeros(len(records)), np.zeros(len(records))
    for p, rec in enumerate(records):
        for demo in rec["demos"]:
            truth = demo.get("true_label", demo["label"])
            if truth is not None:
                known[p] += 1
                wrong[p] += int(truth) != int(demo["label"])
    return wrong, known


def test_input_changed(record: dict) -> float:
    """1.0 where the prompt's test-input control changed its test input, 0.0 where not (the record's
    ``test_input_changed``, else ``test_text`` against ``original_test_text``), NaN where the record cannot say."""
    if "test_input_changed" in record:
        return float(bool(record["test_input_changed"]))
    if "original_test_text" in record:
        return float(str(record["test_text"]).strip() != str(record["original_test_text"]).strip())
    return np.nan


def encoder_similarity(records, prompts, embeddings=None) -> np.ndarray:
    """Per prompt: the mean encoder cosine of its demonstrations to the test input (NaN without one).

    From ``embeddings`` (the prompt file's sentence embeddings, kicl.analysis.encoder_embed: the same encoder for
    every condition, so random demonstrations get a point too) when given; else ``demo_encoder_similarity`` where
    a record has it, or ``demo_similarity`` when the prompt set's meta.json (next to `prompts`) says
    ``demo_similarity_kind: encoder`` or names no kind (BM25 scores and the model's own kernel are on other scales
    and are not mixed into the bandwidth curve)."""
    if embeddings is not None:
        with np.load(embeddings) as data:
            row = {str(text): i for i, text in enumerate(data["texts"])}
            vectors = data["embeddings"].astype(np.float64)
        try:
            return np.array(
                [
                    np.mean([vectors[row[d["text"]]] @ vectors[row[rec["test_text"]]] for d in rec["demos"]])
                    if rec["demos"]
                    else np.nan
                    for rec in records
                ]
            )
        except KeyError as error:
            raise ConditionError(f"{embeddings} has no embedding of the text {error} of {prompts} (stale?)") from None
    meta_path = Path(prompts).with_name("meta.json")
    kind = read_meta(meta_path).get("demo_similarity_kind", "encoder") if meta_path.exists() else "encoder"
    out = np.full(len(records), np.nan)
    for p, rec in enumerate(records):
        values = rec.get("demo_encoder_similarity") or (rec.get("demo_similarity") if kind == "encoder" else None)
        if values:
            out[p] = float(np.mean(values))
    return out


@dataclass(frozen=True)
class ConditionInputs:
    """One condition's files: forward store, prompts.jsonl and effective protocol dict; encoder-KR CSV and sentence
    embeddings of the prompt file where there are some."""

    store: object
    prompts: object
    protocol: dict
    kr_csv: object = None
    embeddings: object = None


def condition_inputs(stores: dict, prompts: dict, protocols: dict, kr_csvs=None, embeddings=None) -> dict:
    """condition -> :class:`ConditionInputs` from per-file mappings (``kr_csvs``, ``embeddings``: optional)."""
    for what, mapping in (("prompts", prompts), ("protocols", protocols)):
        missing = [n for n in stores if n not in mapping]
        if missing:
            raise ConditionError(f"no {what} for condition(s) {missing}")
    kr_csvs, embeddings = kr_csvs or {}, embeddings or {}
    return {
        name: ConditionInputs(stores[name], prompts[name], protocols[name], kr_csvs.get(name), embeddings.get(name))
        for name in stores
    }


def load_condition(name: str, inputs: ConditionInputs, *, pooling: str = "max", ties: str = "lowest") -> Condition:
    """Read one condition; store rows and prompt records are matched by prompt_id (= store row) and test_index."""
    store, prompts, protocol = inputs.store, inputs.prompts, inputs.protocol
    kr_csv, embeddings = inputs.kr_csv, inputs.embeddings
    ds = open_store(store, needs=NEEDS)
    n = ds.sizes["prompt"]
    test_index = ds["test_index"].values.astype(np.int64)
    records = read_prompt_records(prompts)
    if len(records) != n:
        raise ConditionError(f"condition {name!r}: {prompts} has {len(records)} prompts, the store {store} has {n}")
    rec_index = np.array([int(r["test_index"]) for r in records])
    if (rec_index != test_index).any():
        row = int(np.flatnonzero(rec_index != test_index)[0])
        raise ConditionError(
            f"condition {name!r}: prompt {row} of {prompts} has test_index {rec_index[row]}, the store {store} "
            f"{test_index[row]} (stale store or prompt file?)"
        )
    if len(np.unique(test_index)) != n:
        raise ConditionError(f"condition {name!r}: the store {store} has repeated test_index values")
    n_layers, n_heads = ds.sizes["layer"], ds.sizes["head"]
    demo_label = ds["demo_label"].values.astype(np.int64)
    shown = demo_label_matrix(records)
    width = max(shown.shape[1], demo_label.shape[1])
    padded = [np.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=-1) for a in (shown, demo_label)]
    if (padded[0] != padded[1]).any():
        row = int(np.flatnonzero((padded[0] != padded[1]).any(1))[0])
        raise ConditionError(
            f"condition {name!r}: prompt {row} of {prompts} shows demonstration labels {shown[row].tolist()}, the "
            f"store {store} {demo_label[row].tolist()} (stale store or prompt file?)"
        )
    kw = ds["kernel_weight"].sel(pooling=pooling).values.astype(np.float32)  # (N, L, H, D)
    wrong, known = _measured_wrong_labels(records, protocol or {}, f"condition {name!r} ({prompts})")
    similarity = encoder_similarity(records, prompts, embeddings)
    encoder = {}
    if kr_csv is not None:
        frame = pd.read_csv(kr_csv).set_index("test_index")
        missing = sorted(set(test_index.tolist()) - set(frame.index))
        if missing:
            raise ConditionError(f"condition {name!r}: {kr_csv} lacks test points {missing[:5]} (stale file?)")
        frame = frame.loc[test_index]
        if (frame["gold"].to_numpy() != ds["gold"].values).any():
            raise ConditionError(f"condition {name!r}: {kr_csv} and the store {store} disagree on gold labels")
        encoder = {c.removeprefix("pred_"): frame[c].to_numpy() for c in frame.columns if c.startswith("pred_")}
    select = string_values(ds["split"]) == "select"
    fitted_ties = resolve_ties(ties, ds["prediction"].values[select], len(label_names(ds)))
    return Condition(
        name=name,
        protocol=dict(protocol or {}),
        test_index=test_index,
        split=string_values(ds["split"]),
        gold=ds["gold"].values.astype(np.int64),
        prediction=ds["prediction"].values.astype(np.int64),
        demo_label=demo_label,
        head_pred=reconstruct(kw, demo_label, len(label_names(ds)), fitted_ties).reshape(n, n_layers * n_heads),
        kernel_weight=kw.reshape(n, n_layers * n_heads, -1),
        n_layers=n_layers,
        n_heads=n_heads,
        n_labels=len(label_names(ds)),
        similarity=similarity,
        wrong_labels=wrong,
        n_known=known,
        demo_sets=[tuple(sorted(int(d["pool_index"]) for d in r["demos"])) for r in records],
        demo_triples=[
            tuple(sorted((int(d["pool_index"]), int(d["label"]), d["text"]) for d in r["demos"])) for r in records
        ],
        changed=np.array([test_input_changed(r) for r in records], dtype=float),
        encoder=encoder,
        calibrated=calibrated_prediction(ds["label_logits"].values, ds["label_logits_cf"].values)
        if "label_logits_cf" in ds
        else None,
    )


def calibrated_prediction(logits: np.ndarray, content_free: np.ndarray) -> np.ndarray:
    """Contextual calibration (Zhao et al. 2021): argmax over labels of log p(y | prompt) − log p(y | the prompt
    with a content-free test input), both normalised over the label set (ties: lowest label)."""

    def log_softmax(values):
        values = np.asarray(values, dtype=np.float64)
        shifted = values - values.max(axis=1, keepdims=True)
        return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))

    return (log_softmax(logits) - log_softmax(content_free)).argmax(axis=1).astype(np.int64)


def align_conditions(conditions: dict, reference: str) -> dict:
    """Every condition in the reference's test-point order; raise ConditionError naming a condition whose test
    points, splits or gold labels differ from the reference's."""
    if reference not in conditions:
        raise ConditionError(f"the reference condition {reference!r} is not among the conditions {list(conditions)}")
    ref = conditions[reference]
    position = {int(t): i for i, t in enumerate(ref.test_index)}
    out = {}
    for name, cond in conditions.items():
        have, want = set(cond.test_index.tolist()), set(position)
        if have != want:
            extra, lacking = sorted(have - want), sorted(want - have)
            raise ConditionError(
                f"condition {name!r} has other test points than the reference {reference!r}: "
                f"{len(extra)} extra (e.g. {extra[:5]}), {len(lacking)} missing (e.g. {lacking[:5]}); conditions may "
                "not override protocol.seed, n_select or n_heldout"
            )
        order = np.argsort([position[int(t)] for t in cond.test_index])
        cond = cond.take(order)
        for what in ("split", "gold"):
            differs = np.flatnonzero(getattr(cond, what) != getattr(ref, what))
            if len(differs):
                raise ConditionError(
                    f"condition {name!r}: test point {int(ref.test_index[differs[0]])} has {what} "
                    f"{getattr(cond, what)[differs[0]]!r}, the reference {reference!r} "
                    f"{getattr(ref, what)[differs[0]]!r}"
                )
        out[name] = cond
    return out


# ---------------------------------------------------------------------------------------------- bootstrap


@dataclass
class Resamples:
    """Bootstrap resamples drawn once and shared by every condition: multiplicities (B, N) of the test points of
    `points` and (B, N_h) of the held-out points (kicl.analysis.stats.bootstrap_counts), positions into the
    condition arrays."""

    points: np.ndarray
    heldout: np.ndarray
    select: np.ndarray
    counts_points: np.ndarray
    counts_heldout: np.ndarray
    level: float

    @property
    def n_boot(self) -> int:
        return len(self.counts_points)

    def _rows(self, held: bool) -> tuple[np.ndarray, np.ndarray]:
        return (self.heldout, self.counts_heldout) if held else (self.points, self.counts_points)

    def interval(self, values, held: bool = False) -> tuple[float, float, float]:
        """Mean of per-point `values` over points (or held-out points) with its percentile interval."""
        rows, counts = self._rows(held)
        values = np.asarray(values, dtype=float)[rows]
        if values.size == 0 or not np.isfinite(values).all():
            return (np.nan, np.nan, np.nan)
        return (float(values.mean()), *percentile_interval(counts @ values / len(values), self.level))

    def proportion(self, events, held: bool = False) -> tuple[float, float, float]:
        """Share of points (or held-out points) where `events` holds, with its Wilson interval. `events` in [0, 1]
        may be fractions (a mean of pairwise changes): their variance is at most the Bernoulli one at the same
        mean, so the Wilson interval of (Σ events, n) is then conservative."""
        rows, _ = self._rows(held)
        values = np.asarray(events, dtype=float)[rows]
        if values.size == 0 or not np.isfinite(values).all():
            return (np.nan, np.nan, np.nan)
        return (float(values.mean()), *wilson_interval(float(values.sum()), len(values), self.level))

    def paired(self, a, b, held: bool = False, where=None) -> tuple[float, float, float, float]:
        """Mean(a − b) of paired 0/1 outcomes over the points (within the mask `where`, e.g. the changed test
        inputs), its percentile interval over the shared resamples, and the exact McNemar p-value (nothing is
        re-selected inside a paired difference of two fixed predictions)."""
        rows, counts = self._rows(held)
        a, b = np.asarray(a, dtype=float)[rows], np.asarray(b, dtype=float)[rows]
        keep = np.ones(len(rows), bool) if where is None else np.asarray(where, dtype=bool)[rows]
        if not keep.any() or not np.isfinite(a[keep] - b[keep]).all():
            return (np.nan, np.nan, np.nan, np.nan)
        diff = np.where(keep, a - b, 0.0)
        kept = counts @ keep.astype(float)
        boot = (counts @ diff)[kept > 0] / kept[kept > 0]
        return (
            float(diff[keep].mean()),
            *percentile_interval(boot, self.level),
            mcnemar_p(a[keep] > 0.5, b[keep] > 0.5),
        )


def resamples(split: np.ndarray, bootstrap: dict | None, points: str = "all") -> Resamples:
    """Resamples from config ``analysis.bootstrap`` ({n_boot, seed, level}); `points`: 'all' or 'heldout'."""
    bootstrap = {"n_boot": 1000, "seed": 0, "level": 0.95} | dict(bootstrap or {})
    n_boot, level = int(bootstrap["n_boot"]), float(bootstrap["level"])
    if n_boot < 1 or not 0 < level < 1:
        raise ValueError(f"analysis.bootstrap: need n_boot >= 1 and 0 < level < 1, got {bootstrap}")
    if points not in ("all", "heldout"):
        raise ValueError(f"points must be 'all' or 'heldout', got {points!r}")
    heldout, select = np.flatnonzero(split == "heldout"), np.flatnonzero(split == "select")
    if len(heldout) == 0 or len(select) == 0:
        raise ConditionError(
            "the conditions need both 'select' and 'heldout' test points (protocol.n_select/n_heldout)"
        )
    rows = np.arange(len(split)) if points == "all" else heldout
    rng = np.random.default_rng(int(bootstrap["seed"]))
    return Resamples(
        points=rows,
        heldout=heldout,
        select=select,
        counts_points=bootstrap_counts(rng, len(rows), n_boot),
        counts_heldout=bootstrap_counts(rng, len(heldout), n_boot),
        level=level,
    )


# ---------------------------------------------------------------------------------------------- per condition


def choose_head(cond: Condition, rows: np.ndarray) -> int:
    """Flat index of the head whose ỹ agrees most with ŷ on `rows` (ties: lowest layer, then head)."""
    return int((cond.head_pred[rows] == cond.prediction[rows, None]).mean(0).argmax())


def head_name(cond: Condition, flat: int) -> str:
    return HeadId.from_flat(flat, cond.n_heads).label


def protocol_difference(protocol: dict, reference: dict) -> str:
    """'key=value; ...' for the keys where `protocol` differs from `reference` ('' when equal)."""
    keys = sorted(set(protocol) | set(reference))
    return "; ".join(
        f"{k}={json.dumps(protocol.get(k), default=str)}" for k in keys if protocol.get(k) != reference.get(k)
    )


def baseline_predictions(cond: Condition, head: int, ties: str, select: np.ndarray) -> dict:
    """Attention-free baselines for every test point, fitted on `select` (position-only kernel of `head`)."""
    ties = resolve_ties(ties, cond.prediction[select], cond.n_labels)
    fixed = fixed_predictions(
        cond.demo_label,
        cond.n_labels,
        select_prediction=cond.prediction[select],
        select_gold=cond.gold[select],
        ties=ties,
    )
    weights = position_kernel(cond.kernel_weight[select, head, :])
    fixed["position"] = position_predictions(weights, cond.demo_label, cond.n_labels, ties)
    return fixed


def _put(row: dict, name: str, values) -> None:
    row[name], row[f"{name}_low"], row[f"{name}_high"] = values[:3]
    if len(values) == 4:
        row[f"{name}_p"] = values[3]


def condition_metrics(conditions: dict, reference: str, res: Resamples, ties: str = "lowest") -> pd.DataFrame:
    """One row per condition (see the module docstring); `conditions` aligned by align_conditions."""
    ref = conditions[reference]
    ref_head = choose_head(ref, res.select)
    ref_correct = ref.prediction == ref.gold
    rows = []
    for name, cond in conditions.items():
        own_head = choose_head(cond, res.select)
        correct = (cond.prediction == cond.gold).astype(float)
        row = {
            "condition": name,
            "reference": reference,
            "is_reference": name == reference,
            "differs_from_reference": protocol_difference(cond.protocol, ref.protocol),
            "n": len(res.points),
            "n_heldout": len(res.heldout),
        }
        _put(row, "accuracy", res.interval(correct))
        _put(row, "accuracy_diff", res.paired(correct, ref_correct))
        _put(row, "yhat_change", res.proportion(cond.prediction != ref.prediction))
        _put(row, "share_changed", res.proportion(cond.changed))
        row["n_changed"] = int(np.nansum(cond.changed[res.points])) if np.isfinite(cond.changed).all() else np.nan
        _put(row, "accuracy_diff_changed", res.paired(correct, ref_correct, where=cond.changed == 1))
        row["head_ref"] = head_name(cond, ref_head)
        _put(row, "head_ref_agreement", res.interval(cond.head_pred[:, ref_head] == cond.prediction, held=True))
        _put(row, "head_ref_accuracy", res.interval(cond.head_pred[:, ref_head] == cond.gold, held=True))
        row["head_own"] = head_name(cond, own_head)
        _put(row, "head_own_agreement", res.interval(cond.head_pred[:, own_head] == cond.prediction, held=True))
        for base, pred in baseline_predictions(cond, ref_head, ties, res.select).items():
            _put(row, f"baseline_{base}_agreement", res.interval(pred == cond.prediction, held=True))
        for kernel, pred in cond.encoder.items():
            _put(row, f"encoder_{kernel}_accuracy", res.interval(pred == cond.gold, held=True))
            _put(row, f"encoder_{kernel}_agreement", res.interval(pred == cond.prediction, held=True))
        if cond.calibrated is not None:
            _put(row, "calibrated_accuracy", res.interval(cond.calibrated == cond.gold))
            _put(row, "calibrated_accuracy_gain", res.paired(cond.calibrated == cond.gold, correct))
            _put(row, "calibrated_yhat_change", res.proportion(cond.calibrated != cond.prediction))
        _put(row, "mean_demo_similarity", res.interval(cond.similarity))
        shown_ties = resolve_ties(ties, cond.prediction[res.select], cond.n_labels)
        vote = reconstruct(np.where(cond.demo_label >= 0, 1.0, np.nan), cond.demo_label, cond.n_labels, shown_ties)
        _put(row, "majority_shown_agreement", res.interval(vote == cond.prediction))
        _put(row, "wrong_label_share", _ratio_interval(cond.wrong_labels, cond.n_known, res))
        rows.append(row)
    frame = pd.DataFrame(rows)
    # several conditions read against the one reference: Holm-adjusted p-values (the reference itself left out)
    others = ~frame["is_reference"].to_numpy(bool)
    frame["accuracy_diff_p_holm"] = np.nan
    frame.loc[others, "accuracy_diff_p_holm"] = holm(frame.loc[others, "accuracy_diff_p"].to_numpy(float))
    frame.attrs.update(level=res.level, n_boot=res.n_boot)
    return frame


def _ratio_interval(numerator, denominator, res: Resamples) -> tuple[float, float, float]:
    """Σ numerator / Σ denominator over points (a share of demonstrations), with its bootstrap interval."""
    num, den = np.asarray(numerator, float)[res.points], np.asarray(denominator, float)[res.points]
    if not np.isfinite(num).all() or den.sum() == 0:
        return (np.nan, np.nan, np.nan)
    boot = (res.counts_points @ num) / np.maximum(res.counts_points @ den, 1e-12)
    return (float(num.sum() / den.sum()), *percentile_interval(boot, res.level))


# ---------------------------------------------------------------------------------------------- order groups


def _without(protocol: dict, keys) -> str:
    return json.dumps({k: v for k, v in protocol.items() if k not in keys}, sort_keys=True, default=str)


def order_group_members(protocols: dict, reference: str) -> list[list[str]]:
    """Groups (≥ 2 conditions) whose protocols differ only in ORDER_KEYS; the reference's group first."""
    groups: dict[str, list[str]] = {}
    for name, protocol in protocols.items():
        groups.setdefault(_without(protocol, ORDER_KEYS), []).append(name)
    found = [members for members in groups.values() if len(members) > 1]
    return sorted(found, key=lambda members: reference not in members)


def pairwise_change(values: np.ndarray) -> np.ndarray:
    """Per point (column): the share of pairs of rows (orderings) whose values differ. Unlike "not the same under
    every ordering", its mean does not grow with the number of orderings."""
    pairs = list(itertools.combinations(range(len(values)), 2))
    return np.mean([values[i] != values[j] for i, j in pairs], axis=0)


def redraw_reference(conditions: dict, reference: str, res: Resamples) -> dict:
    """The reference scale of order sensitivity: the ŷ-change rate (Wilson interval) between the reference and a
    condition that re-draws its demonstration set, i.e. differs from it only in SELECTION_KEYS with a random
    strategy (REDRAW_STRATEGIES, e.g. class_balanced against random). Without one, a condition that re-selects
    the set by another strategy (a larger change than a re-draw's); without that either, NaN. ``redraw_kind``
    says which."""
    base = _without(conditions[reference].protocol, SELECTION_KEYS)
    same_rest = [
        name
        for name, cond in conditions.items()
        if name != reference and _without(cond.protocol, SELECTION_KEYS) == base
    ]
    redraws = [n for n in same_rest if (conditions[n].protocol.get("demo_strategy") or "random") in REDRAW_STRATEGIES]
    if redraws:
        name, kind = redraws[0], "re-drawn random demonstration set"
    elif same_rest:
        name = same_rest[0]
        kind = "no random re-draw in this run: a set re-selected by another strategy (larger than a re-draw's change)"
    else:
        out = {
            "redraw_condition": "",
            "redraw_kind": "none: no condition of this run differs from the reference only "
            "in how the demonstrations are selected (add e.g. class_balanced)",
        }
        _put(out, "redraw_yhat_change", (np.nan, np.nan, np.nan))
        return out
    out = {"redraw_condition": name, "redraw_kind": kind}
    _put(out, "redraw_yhat_change", res.proportion(conditions[name].prediction != conditions[reference].prediction))
    return out


def order_groups(conditions: dict, reference: str, res: Resamples) -> pd.DataFrame:
    """Per order group: the mean pairwise ŷ-change rate over its orderings (and the share of points whose ŷ is
    not the same under every ordering), the same for ỹ of the reference-chosen head on held-out points, the
    share of points whose orderings show the same (pool index, shown label, input) triples, and the ŷ-change rate
    under a re-drawn demonstration set as reference scale (redraw_reference). Proportions: Wilson intervals."""
    ref_head = choose_head(conditions[reference], res.select)
    scale = redraw_reference(conditions, reference, res)
    rows = []
    members_list = order_group_members({n: c.protocol for n, c in conditions.items()}, reference)
    for number, members in enumerate(members_list):
        conds = [conditions[m] for m in members]
        yhat = np.stack([c.prediction for c in conds])
        ytilde = np.stack([c.head_pred[:, ref_head] for c in conds])
        n_points = len(conds[0].gold)
        same_triples = np.array([len({c.demo_triples[i] for c in conds}) == 1 for i in range(n_points)])
        same_rows = np.array([len({c.demo_sets[i] for c in conds}) == 1 for i in range(n_points)])
        row = {
            "group": number,
            "main": reference in members,
            "members": ", ".join(members),
            "n_orderings": len(members),
            "n": len(res.points),
            "n_heldout": len(res.heldout),
            "head_ref": head_name(conds[0], ref_head),
        }
        _put(row, "yhat_pairwise_change", res.proportion(pairwise_change(yhat)))
        _put(row, "yhat_any_change", res.proportion((yhat != yhat[0]).any(0)))
        _put(row, "ytilde_pairwise_change", res.proportion(pairwise_change(ytilde), held=True))
        _put(row, "ytilde_any_change", res.proportion((ytilde != ytilde[0]).any(0), held=True))
        _put(row, "same_demo_set", res.proportion(same_triples))
        _put(row, "same_demo_rows", res.proportion(same_rows))
        n_other = int((~same_triples[res.points]).sum())
        row["pairs_note"] = (
            f"the orderings show other (pool index, shown label, input) triples on {n_other} of {len(res.points)} "
            "test points: their ŷ changes mix order with label or input changes"
            if n_other
            else ""
        )
        if n_other:
            log.warning("order group %s: %s", row["members"], row["pairs_note"])
        rows.append(row | scale)
    columns = ["group", "main", "members", "n_orderings", "n", "n_heldout", "head_ref"]
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=columns)


# ---------------------------------------------------------------------------------------------- curves

_CURVE_COLUMNS = ["accuracy", "head_ref_agreement", "head_own_agreement", "majority_shown_agreement"]


def _with_intervals(names) -> list[str]:
    return [f"{n}{s}" for n in names for s in ("", "_low", "_high")]


def bandwidth_members(protocols: dict, reference: str) -> list[str]:
    """The reference and the conditions that differ from it only in how demonstrations are selected
    (SELECTION_KEYS): the points of the bandwidth curve (label, input and order controls are left out)."""
    base = _without(protocols[reference], SELECTION_KEYS)
    return [name for name, protocol in protocols.items() if _without(protocol, SELECTION_KEYS) == base]


def bandwidth_curve(metrics: pd.DataFrame, members: list[str] | None = None) -> pd.DataFrame:
    """Accuracy and reconstruction against the mean demonstration similarity, one row per condition of
    ``members`` (default: all) that has it."""
    frame = metrics[np.isfinite(metrics["mean_demo_similarity"].astype(float))]
    if members is not None:
        frame = frame[frame["condition"].isin(members)]
    cols = ["condition", "differs_from_reference", "n", "n_heldout", "head_ref"]
    cols += _with_intervals(["mean_demo_similarity", "accuracy", "head_ref_agreement"])
    return frame[cols].sort_values("mean_demo_similarity").reset_index(drop=True)


def label_noise_members(protocols: dict, reference: str) -> list[str]:
    """Conditions equal to the reference's protocol apart from LABEL_KEYS, with gold, noisy or all-wrong labels."""
    base = _without(protocols[reference], LABEL_KEYS)
    allowed = set(GOLD_LABELS) | set(NOISY_LABELS) | set(ALL_WRONG_LABELS)
    return [
        name
        for name, protocol in protocols.items()
        if _without(protocol, LABEL_KEYS) == base and protocol.get("labels") in allowed
    ]


def label_noise_curve(metrics: pd.DataFrame, protocols: dict, reference: str) -> pd.DataFrame:
    """Accuracy, ŷ agreement with the majority shown label and head reconstruction against the MEASURED share of
    wrong shown labels (x), for the label-noise conditions; conditions whose share is not measurable are left out."""
    members = label_noise_members(protocols, reference)
    frame = metrics[metrics["condition"].isin(members)].copy()
    frame["labels"] = [protocols[c].get("labels") or "gold" for c in frame["condition"]]
    frame["label_noise"] = [protocols[c].get("label_noise", np.nan) for c in frame["condition"]]
    unmeasured = frame.loc[~np.isfinite(frame["wrong_label_share"].astype(float)), "condition"].tolist()
    if unmeasured:
        log.warning("label-noise curve: no measured wrong-label share for %s; left out", unmeasured)
    frame = frame[np.isfinite(frame["wrong_label_share"].astype(float))]
    cols = ["condition", "labels", "label_noise", "n", "n_heldout", "head_ref"]
    cols += _with_intervals(["wrong_label_share"] + _CURVE_COLUMNS)
    return frame[cols].sort_values("wrong_label_share").reset_index(drop=True)


def ood_type(protocol: dict) -> str:
    """The test-input type of a protocol: 'none' for the task's own inputs, else protocol['test_inputs'] (for
    user rewrites the rewrite's own type, protocol['rewrite_type'])."""
    value = protocol.get("test_inputs")
    if value in ORIGINAL_INPUTS:
        return "none"
    if value == "rewrites" and protocol.get("rewrite_type"):
        return str(protocol["rewrite_type"])
    return str(value)


def table1_analogue(
    metrics: pd.DataFrame, protocols: dict, reference: str, task: str, aliases: dict | None = None
) -> pd.DataFrame:
    """Accuracy by test-input type with the paired drop to the reference (McNemar p, Holm-adjusted over the
    condition table), the share of test inputs the transform changed and the drop on the changed ones (an unchanged
    input dilutes the overall drop); the paper's SST-2 numbers beside when `task` is SST-2. Rows: the reference
    ('none') and every condition with other test inputs."""
    names = [reference] + [c for c in metrics["condition"] if c != reference and ood_type(protocols[c]) != "none"]
    frame = metrics.set_index("condition").loc[names].reset_index()
    frame["test_inputs"] = [ood_type(protocols[c]) for c in frame["condition"]]
    cols = ["condition", "test_inputs", "n"] + _with_intervals(["accuracy"])
    cols += ["accuracy_diff", "accuracy_diff_low", "accuracy_diff_high", "accuracy_diff_p", "accuracy_diff_p_holm"]
    cols += ["n_changed"] + _with_intervals(["share_changed"])
    cols += ["accuracy_diff_changed", "accuracy_diff_changed_low", "accuracy_diff_changed_high"]
    cols += ["accuracy_diff_changed_p"]
    out = frame[cols].rename(columns=lambda c: c.replace("accuracy_diff", "drop"))
    sst2 = is_sst2(task, aliases)
    keys = [paper_table1_key(t) for t in out["test_inputs"]]
    out["paper_accuracy"] = [PAPER_TABLE1_SST2[k] if sst2 and k else np.nan for k in keys]
    out["paper_drop"] = out["paper_accuracy"] - (PAPER_TABLE1_SST2["none"] if sst2 else np.nan)
    return out


def head_grids(conditions: dict, splits=("select", "heldout")) -> pd.DataFrame:
    """Long frame (condition, layer, head, agreement, n): each head's agreement of ỹ with ŷ on `splits`."""
    frames = []
    for name, cond in conditions.items():
        rows = np.isin(cond.split, list(splits))
        agree = (cond.head_pred[rows] == cond.prediction[rows, None]).mean(0)
        frames.append(
            pd.DataFrame(
                {
                    "condition": name,
                    "layer": np.repeat(np.arange(cond.n_layers), cond.n_heads),
                    "head": np.tile(np.arange(cond.n_heads), cond.n_layers),
                    "agreement": agree,
                    "n": int(rows.sum()),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


# ---------------------------------------------------------------------------------------------- entry point


@dataclass
class ConditionResults:
    """Everything the conditions stage computes for one (model, task) (kicl.analysis.conditions_stage writes it)."""

    reference: str
    task: str
    metrics: pd.DataFrame
    order: pd.DataFrame
    bandwidth: pd.DataFrame
    label_noise: pd.DataFrame
    table1: pd.DataFrame
    heads: pd.DataFrame
    level: float
    n_boot: int
    points: str


@dataclass(frozen=True)
class StageOptions:
    """How the conditions stage computes: `bootstrap` (config analysis.bootstrap), pooling and vote ties, the test
    points of accuracy-type numbers (`points`: 'all' or 'heldout'), the splits of the head grids, task aliases."""

    bootstrap: dict | None = None
    pooling: str = "max"
    ties: str = "lowest"
    points: str = "all"
    heatmap_splits: tuple = ("select", "heldout")
    aliases: dict | None = None


def compare_conditions(
    inputs: dict, reference: str, task: str, options: StageOptions = StageOptions()
) -> ConditionResults:
    """All numbers of the conditions stage; `inputs`: condition -> :class:`ConditionInputs`."""
    names = list(inputs)
    loaded = {name: load_condition(name, inputs[name], pooling=options.pooling, ties=options.ties) for name in names}
    conditions = align_conditions(loaded, reference)
    res = resamples(conditions[reference].split, options.bootstrap, options.points)
    metrics = condition_metrics(conditions, reference, res, options.ties)
    protocols = {n: conditions[n].protocol for n in names}
    return ConditionResults(
        reference=reference,
        task=task,
        metrics=metrics,
        order=order_groups(conditions, reference, res),
        bandwidth=bandwidth_curve(metrics, bandwidth_members(protocols, reference)),
        label_noise=label_noise_curve(metrics, protocols, reference),
        table1=table1_analogue(metrics, protocols, reference, task, options.aliases),
        heads=head_grids(conditions, options.heatmap_splits),
        level=res.level,
        n_boot=res.n_boot,
        points=options.points,
    )
