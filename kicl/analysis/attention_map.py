"""Fig 2 / Fig 25 numbers: the last token's attention over an aligned prompt layout, averaged over test points.

Plot-free; the drawing is kicl.figures.fig2_attention_map.

Each prompt is cut into segments from the store's segment map: for demonstration i, the template words
before the input (`pre{i}`, includes BOS for i = 1), the input x_i (`x{i}`), the template words up to the
label (`mid{i}`), the label token (`y{i}`), any further label tokens (`post{i}`) and the delimiter
(`delim{i}`); then `pre_test`, the test input `x_test` and `post_test` (the template words the last token
belongs to). Inputs (x_i and x_test) are resized to `rescale_len` columns by linear interpolation; every
other segment keeps its token count (the most common count over the averaged prompts; a prompt whose count
differs, e.g. after a BPE merge at a boundary, is interpolated to it and counted in `n_resized`).

Two interpolation modes (config `analysis.rescale_mode`):
* `values` (the paper's reading, np.interp): the attention *values* are sampled at evenly spaced relative
  positions along the segment. The level of the attention is kept; its total over the segment scales with
  rescale_len / |x|.
* `mass`: the cumulative attention along the segment is interpolated linearly, so each output column holds
  the attention *mass* of its share of the segment and the segment's total is kept exactly.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd

from kicl.store.reader import prompt_batches

log = logging.getLogger(__name__)
RESCALED_KINDS = ("input", "test")
MODES = ("values", "mass")


@lru_cache(maxsize=4096)
def interpolation_matrix(n_in: int, n_out: int, mode: str = "values") -> np.ndarray:
    """Matrix W (n_out, n_in) with resized = W @ segment for a segment of n_in tokens resized to n_out."""
    if n_in < 1 or n_out < 1:
        raise ValueError(f"cannot resize a segment of {n_in} tokens to {n_out} columns")
    if mode == "values":
        src = (np.arange(n_in) + 0.5) / n_in
        dst = (np.arange(n_out) + 0.5) / n_out
        return np.stack([np.interp(dst, src, unit) for unit in np.eye(n_in)], axis=1)
    if mode == "mass":
        src = np.arange(n_in + 1) / n_in
        dst = np.arange(n_out + 1) / n_out
        lo = np.maximum(dst[:-1, None], src[None, :-1])
        hi = np.minimum(dst[1:, None], src[None, 1:])
        return np.clip(hi - lo, 0, None) * n_in
    raise ValueError(f"analysis.rescale_mode must be one of {MODES}, got {mode!r}")


def resize(segment: np.ndarray, n_out: int, mode: str = "values") -> np.ndarray:
    """Resize the last axis of `segment` to `n_out` columns (see the module docstring for the modes)."""
    return segment @ interpolation_matrix(segment.shape[-1], n_out, mode).T


def prompt_segments(input_start, input_end, label_pos, delim_start, delim_end, test_start, test_end, length):
    """Segments (name, kind, start, end) of one prompt, in prompt order; missing demos (start < 0) are skipped."""
    segs, prev = [], 0
    for d in range(len(input_start)):
        if input_start[d] < 0:
            continue
        i = d + 1
        lab = int(label_pos[d])
        segs += [
            (f"pre{i}", "template", prev, int(input_start[d])),
            (f"x{i}", "input", int(input_start[d]), int(input_end[d])),
            (f"mid{i}", "template", int(input_end[d]), lab),
            (f"y{i}", "label", lab, lab + 1),
            (f"post{i}", "template", lab + 1, max(lab + 1, int(delim_start[d]))),
            (f"delim{i}", "delim", int(delim_start[d]), int(delim_end[d])),
        ]
        prev = int(delim_end[d])
    segs += [
        ("pre_test", "template", prev, int(test_start)),
        ("x_test", "test", int(test_start), int(test_end)),
        ("post_test", "template", int(test_end), int(length)),
    ]
    return segs


@dataclass
class AttentionMap:
    """An aligned attention map: values (layer, head, column) plus what each column is."""

    values: np.ndarray
    column_segment: list[str]
    column_kind: list[str]
    counts: np.ndarray  # prompts contributing to each column
    n_prompts: int
    n_resized: int  # prompts with a non-input segment resized to the common length
    rescale_len: int | None
    mode: str

    def column_names(self) -> list[str]:
        seen = Counter(self.column_segment)
        index = Counter()
        names = []
        for seg in self.column_segment:
            names.append(seg if seen[seg] == 1 else f"{seg}_{index[seg]:02d}")
            index[seg] += 1
        return names

    def to_frame(self) -> pd.DataFrame:
        """Wide table: one row per (layer, head), one column per aligned position."""
        n_layers, n_heads, _ = self.values.shape
        frame = pd.DataFrame(self.values.reshape(n_layers * n_heads, -1), columns=self.column_names())
        frame.insert(0, "head", np.tile(np.arange(n_heads), n_layers))
        frame.insert(0, "layer", np.repeat(np.arange(n_layers), n_heads))
        return frame


def _segment_table(ds, prompts):
    cols = ["input_start", "input_end", "label_pos", "delim_start", "delim_end"]
    demo = {c: ds[c].isel(prompt=prompts).values for c in cols}
    one = {c: ds[c].isel(prompt=prompts).values for c in ["test_start", "test_end", "length"]}
    return [
        prompt_segments(*(demo[c][j] for c in cols), one["test_start"][j], one["test_end"][j], one["length"][j])
        for j in range(len(prompts))
    ]


def aligned_attention_map(ds, prompts, rescale_len: int | None = 30, mode: str = "values", batch_size: int = 32):
    """Average the last-token attention of `prompts` (row indices) over the aligned layout."""
    prompts = np.sort(np.asarray(prompts, dtype=int))
    if len(prompts) == 0:
        raise ValueError("no prompts to average (check analysis.figure_splits / analysis.single_prompt)")
    if mode not in MODES:
        raise ValueError(f"analysis.rescale_mode must be one of {MODES}, got {mode!r}")
    segments = _segment_table(ds, prompts)
    kinds, lengths = {}, {}
    for segs in segments:
        for name, kind, start, end in segs:
            kinds.setdefault(name, kind)
            lengths.setdefault(name, Counter())[end - start] += 1
    per_demo = ("pre", "x", "mid", "y", "post", "delim")
    order = [f"{part}{i}" for i in range(1, ds.sizes["demo"] + 1) for part in per_demo if f"{part}{i}" in kinds]
    order += ["pre_test", "x_test", "post_test"]
    width = {}
    for name in order:
        if rescale_len is not None and kinds[name] in RESCALED_KINDS:
            width[name] = rescale_len
        else:
            width[name] = max(lengths[name].items(), key=lambda kv: (kv[1], kv[0]))[0]
    offset, col_seg, col_kind = {}, [], []
    for name in order:
        offset[name] = len(col_seg)
        col_seg += [name] * width[name]
        col_kind += [kinds[name]] * width[name]

    n_layers, n_heads = ds.sizes["layer"], ds.sizes["head"]
    total = np.zeros((n_layers, n_heads, len(col_seg)))
    counts = np.zeros(len(col_seg), dtype=int)
    n_resized = 0
    row = {p: j for j, p in enumerate(prompts)}
    for batch in prompt_batches(prompts, batch_size):
        att = ds["attention"].isel(prompt=batch).values.astype(np.float64)
        for b, p in enumerate(batch):
            resized = False
            for name, kind, start, end in segments[row[p]]:
                n_out, n_in = width[name], end - start
                if n_out == 0 or n_in <= 0:
                    continue
                piece = att[b, :, :, start:end]
                if n_in != n_out:
                    piece = resize(piece, n_out, mode)
                    resized |= kind not in RESCALED_KINDS or rescale_len is None
                total[:, :, offset[name] : offset[name] + n_out] += piece
                counts[offset[name] : offset[name] + n_out] += 1
            n_resized += resized
    with np.errstate(invalid="ignore", divide="ignore"):
        values = total / counts
    if n_resized:
        log.info(
            "%d of %d prompts had a template/delimiter segment resized to the common length", n_resized, len(prompts)
        )
    return AttentionMap(values, col_seg, col_kind, counts, len(prompts), n_resized, rescale_len, mode)
