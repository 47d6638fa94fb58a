"""Small forward stores with planted structure, following the forward-store contract.

`make_synthetic_store` writes `results/forward/{model}/{task}/{condition}.zarr`-shaped stores whose answers are known:
a planted head whose attention sits on the label tokens of the demonstrations that carry the model's
prediction (reconstruction = 100 %), sim_pred planted to correlate with one head's kernel weight, and keys /
values that encode demo_top_token / the demonstration label linearly at one head and offset. Used by the
tests and for trying the figure rules without a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kicl.fileio import atomic_directory
from kicl.store.pooling import POOLINGS, kernel_weights
from kicl.store.schema import forward_variables, layout
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


def make_synthetic_store(
    path,
    *,
    n_prompts: int = 60,
    n_layers: int = 3,
    n_heads: int = 4,
    n_kv_heads: int | None = None,
    n_demos: int = 6,
    min_demos: int | None = None,
    n_labels: int = 2,
    head_dim: int = 16,
    kv_prompts: int | None = None,
    len_range: tuple[int, int] = (3, 9),
    select_fraction: float = 0.7,
    planted: Planted | None = None,
    seed: int = 0,
    overrides: dict | None = None,
) -> Path:
    """Write a forward store with planted answers at `path` through the real writer and return the path.

    Demonstration labels and gold labels are independent uniform draws. Without a planted label head the
    prediction is one too, so a head with random attention agrees with it at rate 1/n_labels; with one, the
    prediction is the label of a random demonstration of the prompt. `min_demos` < `n_demos` gives some prompts
    fewer demonstrations (missing demos: label -1, NaN weights, -1 positions). `overrides` (variable name ->
    array of the declared shape) replaces generated variables before writing (e.g. another condition's ŷ);
    `demo_hubness` (P, D), which the store has only when given here, adds it (like a capture's store).
    """
    planted = planted or Planted()
    rng = np.random.default_rng(seed)
    n_kv_heads = n_kv_heads or n_heads
    kv_prompts = n_prompts if kv_prompts is None else kv_prompts
    min_demos = n_demos if min_demos is None else min_demos

    counts = rng.integers(min_demos, n_demos + 1, n_prompts)
    layouts = [_segment_layout(rng, int(c), len_range) for c in counts]
    lengths = np.array([lay[3] for lay in layouts])
    n_pos = int(lengths.max())

    def demo_array(idx, fill=-1):
        out = np.full((n_prompts, n_demos), fill, np.int64)
        for p, (rows, *_rest) in enumerate(layouts):
            for d, row in enumerate(rows):
                out[p, d] = row[idx]
        return out

    input_start, input_end, label_pos, delim_start, delim_end = (demo_array(i) for i in range(5))
    present = input_start >= 0
    demo_label = np.where(present, rng.integers(0, n_labels, (n_prompts, n_demos)), -1)
    gold = rng.integers(0, n_labels, n_prompts)
    prediction = rng.integers(0, n_labels, n_prompts)
    if planted.label_head is not None:  # a head can only reconstruct ŷ if some demonstration carries it
        pick = rng.integers(0, counts)
        prediction = demo_label[np.arange(n_prompts), pick]
    label_logits = rng.normal(size=(n_prompts, n_labels)).astype(np.float32)
    label_logits[np.arange(n_prompts), prediction] += 5.0

    attention = np.full((n_prompts, n_layers, n_heads, n_pos), np.nan, np.float32)
    kernel_weight = np.full((n_prompts, len(POOLINGS), n_layers, n_heads, n_demos), np.nan, np.float32)
    for p in range(n_prompts):
        length = lengths[p]
        att = rng.dirichlet(np.ones(length), size=(n_layers, n_heads)).astype(np.float32)
        if planted.label_head is not None:
            lay, head = planted.label_head
            hits = label_pos[p][(demo_label[p] == prediction[p]) & present[p]]
            row = att[lay, head] * (1 - planted.label_mass)
            if len(hits):
                row[hits] += planted.label_mass / len(hits)
            else:  # no demo carries the prediction: put the mass on the last token (no label vote)
                row[length - 1] += planted.label_mass
            att[lay, head] = row
        attention[p, :, :, :length] = att
        kernel_weight[p] = kernel_weights(att, input_start[p], label_pos[p])

    top_ids = rng.choice(1000, planted.n_top_tokens, replace=False)
    top_class = rng.integers(0, planted.n_top_tokens, (n_prompts, n_demos))
    demo_top_token = np.where(present, top_ids[top_class], -1)
    test_top_token = top_ids[rng.integers(0, planted.n_top_tokens, n_prompts)]

    sim_pred = rng.uniform(0, 1, (n_prompts, n_demos)).astype(np.float32)
    if planted.simpred_head is not None:
        lay, head = planted.simpred_head
        kw = kernel_weight[:, 0, lay, head, :].astype(np.float64)
        z = (kw - np.nanmean(kw)) / np.nanstd(kw)
        rho = planted.simpred_rho
        sim_pred = (0.5 + 0.1 * (rho * z + np.sqrt(1 - rho**2) * rng.normal(size=z.shape))).astype(np.float32)
    sim_pred[~present] = np.nan

    kv_shape = (kv_prompts, n_layers, n_kv_heads, n_demos, len(OFFSETS), head_dim)
    keys = rng.normal(size=kv_shape).astype(np.float32)
    values = rng.normal(size=kv_shape).astype(np.float32)
    if planted.kv_head is not None and kv_prompts:
        lay, head = planted.kv_head
        o = OFFSETS.index(planted.kv_offset)
        top_dirs = rng.normal(size=(planted.n_top_tokens, head_dim))
        label_dirs = rng.normal(size=(n_labels, head_dim))
        keys[:, lay, head, :, o, :] += planted.kv_scale * top_dirs[top_class[:kv_prompts]]
        values[:, lay, head, :, o, :] += planted.kv_scale * label_dirs[np.clip(demo_label[:kv_prompts], 0, None)]
    missing_kv = ~present[:kv_prompts]
    keys.transpose(0, 3, 1, 2, 4, 5)[missing_kv] = np.nan
    values.transpose(0, 3, 1, 2, 4, 5)[missing_kv] = np.nan

    n_select = int(round(select_fraction * n_prompts))
    split = np.array(["select"] * n_select + ["heldout"] * (n_prompts - n_select), dtype=str)
    rng.shuffle(split)
    label_names = [f"label{k}" for k in range(n_labels)]
    test_text = np.array([f"synthetic test input {p}" for p in range(n_prompts)], dtype=str)
    demo_text = np.where(present, np.char.add("synthetic demonstration ", np.arange(n_demos).astype(str)), "")
    block_start = np.where(present, input_start - 1, -1)  # the template word before the input
    data = {
        "attention": attention,
        "length": lengths.astype(np.int64),
        "split": split,
        "test_index": np.arange(n_prompts, dtype=np.int64),
        "gold": gold.astype(np.int64),
        "prediction": prediction.astype(np.int64),
        "label_logits": label_logits,
        "demo_label": demo_label.astype(np.int64),
        "demo_pool_index": np.where(present, rng.integers(0, 10 * n_demos, (n_prompts, n_demos)), -1),
        "kernel_weight": kernel_weight,
        "input_start": input_start,
        "input_end": input_end,
        "label_pos": label_pos,
        "delim_start": delim_start,
        "delim_end": delim_end,
        "block_start": block_start,
        "block_end": delim_end,
        "test_start": np.array([lay[1] for lay in layouts], np.int64),
        "test_end": np.array([lay[2] for lay in layouts], np.int64),
        "sim_pred": sim_pred,
        "demo_top_token": demo_top_token.astype(np.int64),
        "test_top_token": test_top_token.astype(np.int64),
        "prompt_text": np.array([f"synthetic prompt {p}" for p in range(n_prompts)], dtype=str),
        "test_text": test_text,
        "demo_text": demo_text,
    }
    if kv_prompts:
        data.update(keys=keys, values=values)
    overrides = dict(overrides or {})
    with_hubness = "demo_hubness" in overrides
    if with_hubness:
        data["demo_hubness"] = np.full((n_prompts, n_demos), np.nan, np.float32)
    for name, values in overrides.items():
        if name not in data or np.shape(values) != np.shape(data[name]):
            raise ValueError(f"synthetic store override {name!r}: not a variable of shape {np.shape(data.get(name))}")
        data[name] = np.asarray(values).astype(data[name].dtype)
    sizes, coords = layout(
        n_prompts=n_prompts, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads, n_positions=n_pos,
        label_names=label_names, n_demos=n_demos, n_kv_prompts=kv_prompts, offsets=OFFSETS, head_dim=head_dim,
    )  # fmt: skip
    attrs = {
        "kicl_store": "forward",
        "model": "synthetic",
        "task": "synthetic",
        "label_names": label_names,
        "verbalizers": [f" {name}" for name in label_names],
        "seed": seed,
        "rotary": False,
        "synthetic": True,
    }
    path = Path(path)
    with atomic_directory(path) as tmp:
        variables = forward_variables(rotary=False, with_kv=kv_prompts > 0, hubness=with_hubness)
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
