"""Small forward stores with planted structure, following the forward-store contract.

`make_synthetic_store` writes `results/forward/{model}/{task}/{condition}.zarr`-shaped stores whose answers are known:
a planted head whose attention sits on the label tokens of the demonstrations that carry the model's
prediction (reconstruction = 100 %), sim_pred planted to correlate with one head's kernel weight, and keys /
values that encode demo_top_token / the demonstration label linearly at one head and offset. Used by the
tests and for trying the figure rules without a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from kicl.fileio import atomic_directory
from kicl.store.pooling import POOLINGS, kernel_weights
from kicl.store.schema import StoreSizes, forward_variables, layout
from kicl.store.writer import ForwardStoreWriter

OFFSETS = [-1, 0, 1, 2, 3]  # the default capture.kv_offsets


@dataclass
class Planted:
    """Where the known answers sit (layer, head) and how strong they are."""

    label_head: tuple[int, int] | None = (1, 2)  # attention on label tokens of demos with label == prediction
    label_mass: float = 0.8
    simpred_head: tuple[int, int] | None = (0, 1)  # sim_pred correlates with this head's max kernel weight
    simpred_rho: float = 0.6
    kv_head: tuple[int, int] | None = (1, 0)  # (layer, kv_head) whose keys/values encode the targets
    kv_offset: int = 0
    kv_scale: float = 4.0
    n_top_tokens: int = 4  # distinct demo_top_token ids (keys -> top token is a 4-class problem)
    extra: dict = field(default_factory=dict)


def _segment_layout(rng, n_demos, len_range):
    """Token positions of one prompt: BOS, then `Input: x Output: y \\n` blocks, then `Input: x_test Output:`."""
    pos = 1
    rows = []
    for _ in range(n_demos):
        n_x = int(rng.integers(len_range[0], len_range[1] + 1))
        input_start = pos + 1
        input_end = input_start + n_x
        label_pos = input_end + 1
        rows.append((input_start, input_end, label_pos, label_pos + 1, label_pos + 2))
        pos = label_pos + 2
    n_x = int(rng.integers(len_range[0], len_range[1] + 1))
    test_start = pos + 1
    test_end = test_start + n_x
    return rows, test_start, test_end, test_end + 1


@dataclass(frozen=True)
class SyntheticSpec:
    """The sizes of a synthetic store and its seed (None: as many kv heads as heads, every prompt keeps keys and
    values, every prompt has `n_demos` demonstrations)."""

    n_prompts: int = 60
    n_layers: int = 3
    n_heads: int = 4
    n_kv_heads: int | None = None
    n_demos: int = 6
    min_demos: int | None = None
    n_labels: int = 2
    head_dim: int = 16
    kv_prompts: int | None = None
    len_range: tuple[int, int] = (3, 9)
    select_fraction: float = 0.7
    seed: int = 0

    def resolved(self) -> SyntheticSpec:
        """The spec with every None replaced by its meaning."""
        return replace(
            self,
            n_kv_heads=self.n_kv_heads or self.n_heads,
            kv_prompts=self.n_prompts if self.kv_prompts is None else self.kv_prompts,
            min_demos=self.n_demos if self.min_demos is None else self.min_demos,
        )


@dataclass
class _Demos:
    """Token positions of every prompt's demonstrations (P, D; -1 where a prompt has fewer) and of its test input."""

    counts: np.ndarray
    layouts: list
    lengths: np.ndarray
    input_start: np.ndarray
    input_end: np.ndarray
    label_pos: np.ndarray
    delim_start: np.ndarray
    delim_end: np.ndarray

    @property
    def present(self) -> np.ndarray:
        return self.input_start >= 0


def _demo_positions(rng, spec: SyntheticSpec) -> _Demos:
    counts = rng.integers(spec.min_demos, spec.n_demos + 1, spec.n_prompts)
    layouts = [_segment_layout(rng, int(c), spec.len_range) for c in counts]

    def demo_array(idx, fill=-1):
        out = np.full((spec.n_prompts, spec.n_demos), fill, np.int64)
        for p, (rows, *_rest) in enumerate(layouts):
            for d, row in enumerate(rows):
                out[p, d] = row[idx]
        return out

    lengths = np.array([lay[3] for lay in layouts])
    return _Demos(counts, layouts, lengths, *(demo_array(i) for i in range(5)))


def _labels(rng, spec: SyntheticSpec, planted: Planted, demos: _Demos):
    """(demo_label, gold, prediction, label_logits): independent uniform draws; with a planted label head the
    prediction is the label of a random demonstration."""
    shape = (spec.n_prompts, spec.n_demos)
    demo_label = np.where(demos.present, rng.integers(0, spec.n_labels, shape), -1)
    gold = rng.integers(0, spec.n_labels, spec.n_prompts)
    prediction = rng.integers(0, spec.n_labels, spec.n_prompts)
    if planted.label_head is not None:  # a head can only reconstruct ŷ if some demonstration carries it
        pick = rng.integers(0, demos.counts)
        prediction = demo_label[np.arange(spec.n_prompts), pick]
    label_logits = rng.normal(size=(spec.n_prompts, spec.n_labels)).astype(np.float32)
    label_logits[np.arange(spec.n_prompts), prediction] += 5.0
    return demo_label, gold, prediction, label_logits


def _attention(rng, spec: SyntheticSpec, planted: Planted, demos: _Demos, demo_label, prediction):
    """(attention, kernel_weight): Dirichlet rows, the planted head's mass on the label tokens carrying ŷ."""
    n_pos = int(demos.lengths.max())
    attention = np.full((spec.n_prompts, spec.n_layers, spec.n_heads, n_pos), np.nan, np.float32)
    kernel_weight = np.full(
        (spec.n_prompts, len(POOLINGS), spec.n_layers, spec.n_heads, spec.n_demos), np.nan, np.float32
    )
    for p in range(spec.n_prompts):
        length = demos.lengths[p]
        att = rng.dirichlet(np.ones(length), size=(spec.n_layers, spec.n_heads)).astype(np.float32)
        if planted.label_head is not None:
            lay, head = planted.label_head
            hits = demos.label_pos[p][(demo_label[p] == prediction[p]) & demos.present[p]]
            row = att[lay, head] * (1 - planted.label_mass)
            if len(hits):
                row[hits] += planted.label_mass / len(hits)
            else:  # no demo carries the prediction: put the mass on the last token (no label vote)
                row[length - 1] += planted.label_mass
            att[lay, head] = row
        attention[p, :, :, :length] = att
        kernel_weight[p] = kernel_weights(att, demos.input_start[p], demos.label_pos[p])
    return attention, kernel_weight


def _sim_pred(rng, spec: SyntheticSpec, planted: Planted, kernel_weight, present):
    """Uniform, or correlated with the planted head's max-pooled kernel weight; NaN for missing demos."""
    sim_pred = rng.uniform(0, 1, (spec.n_prompts, spec.n_demos)).astype(np.float32)
    if planted.simpred_head is not None:
        lay, head = planted.simpred_head
        kw = kernel_weight[:, 0, lay, head, :].astype(np.float64)
        z = (kw - np.nanmean(kw)) / np.nanstd(kw)
        rho = planted.simpred_rho
        sim_pred = (0.5 + 0.1 * (rho * z + np.sqrt(1 - rho**2) * rng.normal(size=z.shape))).astype(np.float32)
    sim_pred[~present] = np.nan
    return sim_pred


def _keys_values(rng, spec: SyntheticSpec, planted: Planted, present, top_class, demo_label):
    """Gaussian keys and values; at the planted (layer, kv head, offset) they encode the top token / the label."""
    kv_prompts = spec.kv_prompts
    kv_shape = (kv_prompts, spec.n_layers, spec.n_kv_heads, spec.n_demos, len(OFFSETS), spec.head_dim)
    keys = rng.normal(size=kv_shape).astype(np.float32)
    values = rng.normal(size=kv_shape).astype(np.float32)
    if planted.kv_head is not None and kv_prompts:
        lay, head = planted.kv_head
        o = OFFSETS.index(planted.kv_offset)
        top_dirs = rng.normal(size=(planted.n_top_tokens, spec.head_dim))
        label_dirs = rng.normal(size=(spec.n_labels, spec.head_dim))
        keys[:, lay, head, :, o, :] += planted.kv_scale * top_dirs[top_class[:kv_prompts]]
        values[:, lay, head, :, o, :] += planted.kv_scale * label_dirs[np.clip(demo_label[:kv_prompts], 0, None)]
    missing_kv = ~present[:kv_prompts]
    keys.transpose(0, 3, 1, 2, 4, 5)[missing_kv] = np.nan
    values.transpose(0, 3, 1, 2, 4, 5)[missing_kv] = np.nan
    return keys, values


def _synthetic_variables(rng, spec: SyntheticSpec, planted: Planted) -> dict[str, np.ndarray]:
    """Every variable of the store, drawn from `rng` in a fixed order."""
    n_prompts, n_demos = spec.n_prompts, spec.n_demos
    demos = _demo_positions(rng, spec)
    present = demos.present
    demo_label, gold, prediction, label_logits = _labels(rng, spec, planted, demos)
    attention, kernel_weight = _attention(rng, spec, planted, demos, demo_label, prediction)

    top_ids = rng.choice(1000, planted.n_top_tokens, replace=False)
    top_class = rng.integers(0, planted.n_top_tokens, (n_prompts, n_demos))
    demo_top_token = np.where(present, top_ids[top_class], -1)
    test_top_token = top_ids[rng.integers(0, planted.n_top_tokens, n_prompts)]
    sim_pred = _sim_pred(rng, spec, planted, kernel_weight, present)
    keys, values = _keys_values(rng, spec, planted, present, top_class, demo_label)

    n_select = int(round(spec.select_fraction * n_prompts))
    split = np.array(["select"] * n_select + ["heldout"] * (n_prompts - n_select), dtype=str)
    rng.shuffle(split)
    data = {
        "attention": attention,
        "length": demos.lengths.astype(np.int64),
        "split": split,
        "test_index": np.arange(n_prompts, dtype=np.int64),
        "gold": gold.astype(np.int64),
        "prediction": prediction.astype(np.int64),
        "label_logits": label_logits,
        "demo_label": demo_label.astype(np.int64),
        "demo_pool_index": np.where(present, rng.integers(0, 10 * n_demos, (n_prompts, n_demos)), -1),
        "kernel_weight": kernel_weight,
        "input_start": demos.input_start,
        "input_end": demos.input_end,
        "label_pos": demos.label_pos,
        "delim_start": demos.delim_start,
        "delim_end": demos.delim_end,
        "block_start": np.where(present, demos.input_start - 1, -1),  # the template word before the input
        "block_end": demos.delim_end,
        "test_start": np.array([lay[1] for lay in demos.layouts], np.int64),
        "test_end": np.array([lay[2] for lay in demos.layouts], np.int64),
        "sim_pred": sim_pred,
        "demo_top_token": demo_top_token.astype(np.int64),
        "test_top_token": test_top_token.astype(np.int64),
        "prompt_text": np.array([f"synthetic prompt {p}" for p in range(n_prompts)], dtype=str),
        "test_text": np.array([f"synthetic test input {p}" for p in range(n_prompts)], dtype=str),
        "demo_text": np.where(present, np.char.add("synthetic demonstration ", np.arange(n_demos).astype(str)), ""),
    }
    if spec.kv_prompts:
        data.update(keys=keys, values=values)
    return data


def make_synthetic_store(path, *, planted: Planted | None = None, overrides: dict | None = None, **spec) -> Path:
    """Write a forward store with planted answers at `path` through the real writer and return the path.

    `spec`: the fields of :class:`SyntheticSpec` (sizes and seed). Demonstration labels and gold labels are
    independent uniform draws. Without a planted label head the prediction is one too, so a head with random
    attention agrees with it at rate 1/n_labels; with one, the prediction is the label of a random demonstration
    of the prompt. `min_demos` < `n_demos` gives some prompts fewer demonstrations (missing demos: label -1, NaN
    weights, -1 positions). `overrides` (variable name -> array of the declared shape) replaces generated
    variables before writing (e.g. another condition's ŷ); `demo_hubness` (P, D), which the store has only when
    given here, adds it (like a capture's store).
    """
    spec = SyntheticSpec(**spec).resolved()
    data = _synthetic_variables(np.random.default_rng(spec.seed), spec, planted or Planted())
    overrides = dict(overrides or {})
    with_hubness = "demo_hubness" in overrides
    if with_hubness:
        data["demo_hubness"] = np.full((spec.n_prompts, spec.n_demos), np.nan, np.float32)
    for name, values in overrides.items():
        if name not in data or np.shape(values) != np.shape(data[name]):
            raise ValueError(f"synthetic store override {name!r}: not a variable of shape {np.shape(data.get(name))}")
        data[name] = np.asarray(values).astype(data[name].dtype)
    label_names = [f"label{k}" for k in range(spec.n_labels)]
    sizes, coords = layout(
        StoreSizes(
            n_prompts=spec.n_prompts, n_layers=spec.n_layers, n_heads=spec.n_heads, n_kv_heads=spec.n_kv_heads,
            n_positions=data["attention"].shape[-1], label_names=label_names, n_demos=spec.n_demos,
            n_kv_prompts=spec.kv_prompts, offsets=OFFSETS, head_dim=spec.head_dim,
        )
    )  # fmt: skip
    attrs = {
        "kicl_store": "forward",
        "model": "synthetic",
        "task": "synthetic",
        "label_names": label_names,
        "verbalizers": [f" {name}" for name in label_names],
        "seed": spec.seed,
        "rotary": False,
        "synthetic": True,
    }
    path = Path(path)
    with atomic_directory(path) as tmp:
        variables = forward_variables(rotary=False, with_kv=spec.kv_prompts > 0, hubness=with_hubness)
        writer = ForwardStoreWriter(tmp, sizes, coords, variables, attrs)
        for name, values in data.items():
            writer.write(name, 0, values)
        writer.finalize()
    return path


def write_synthetic_prompts(store, meta_path, prompts_path, *, demo_similarity=None, true_label=None) -> None:
    """A prompt file (kicl.prompts.files) matching a synthetic store row by row: same test_index, split, gold,
    shown demonstration labels and token spans. `demo_similarity` (P, D) adds each record's ``demo_similarity``;
    `true_label` (P, D) adds each demonstration's ``true_label`` (None allowed: an input from another task; its
    shown label stays the store's)."""
    from kicl.prompts.files import write_prompt_set
    from kicl.store.reader import open_store, string_values

    ds = open_store(store)
    v = {name: ds[name].values for name in ("test_index", "gold", "length", "test_start", "test_end", "demo_label")}
    for name in ("input_start", "input_end", "label_pos", "delim_start", "delim_end", "block_start", "block_end"):
        v[name] = ds[name].values
    pool = ds["demo_pool_index"].values
    split = string_values(ds["split"])
    records = []
    for p in range(ds.sizes["prompt"]):
        demos = []
        for d in np.flatnonzero(v["demo_label"][p] >= 0):
            demo = {
                "pool_index": int(pool[p, d]),
                "label": int(v["demo_label"][p, d]),
                "text": f"synthetic demonstration {pool[p, d]}",
                "block_span": [int(v["block_start"][p, d]), int(v["block_end"][p, d])],
                "input_span": [int(v["input_start"][p, d]), int(v["input_end"][p, d])],
                "label_pos": int(v["label_pos"][p, d]),
                "delim_span": [int(v["delim_start"][p, d]), int(v["delim_end"][p, d])],
            }
            if true_label is not None:
                demo["true_label"] = None if true_label[p][d] is None else int(true_label[p][d])
            demos.append(demo)
        record = {
            "prompt_id": p,
            "split": str(split[p]),
            "test_index": int(v["test_index"][p]),
            "gold": int(v["gold"][p]),
            "input_ids": [0] * int(v["length"][p]),
            "test_text": f"synthetic test input {v['test_index'][p]}",
            "test_span": [int(v["test_start"][p]), int(v["test_end"][p])],
            "n_demos": len(demos),
            "demos": demos,
        }
        if demo_similarity is not None:
            record["demo_similarity"] = [float(demo_similarity[p][d]) for d in range(len(demos))]
        records.append(record)
    names = [str(n) for n in ds.attrs["label_names"]]
    meta = {
        "task": str(ds.attrs.get("task", "synthetic")),
        "model": str(ds.attrs.get("model", "synthetic")),
        "label_names": names,
        "verbalizers": [f" {n}" for n in names],
        "label_token_ids": list(range(len(names))),
        "readout": "single_token",
        "template": {"input_prefix": "Input: ", "output_prefix": " Output:", "delimiter": "\n"},
    }
    write_prompt_set(meta, records, meta_path, prompts_path)
