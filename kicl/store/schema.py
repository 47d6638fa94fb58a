"""The forward-store contract: every dimension and variable of `results/forward/{model}/{task}/{condition}.zarr`.

The writer creates exactly the arrays declared here (``forward_variables``), the reader checks a store against
them (``kicl.store.reader.open_store(path, needs=...)``), the synthetic test stores are written through the
same writer, and the variable table in docs/store.md is generated from ``VARIABLES`` (``markdown_table``;
regenerate with ``python -m kicl.store.schema docs/store.md``; a test compares the two).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kicl.store.pooling import POOLINGS

# when a variable is present: in every store, only when keys/values are kept (capture.kv_prompts > 0), only
# then and for a model with rotary position embeddings, only with capture.calibration, or in every capture since
# that variable was added (older stores and synthetic test stores may lack it; readers fall back)
ALWAYS, WITH_KV, ROTARY_KV, CALIBRATED = "always", "with kv", "with kv, rotary models", "with calibration"
CAPTURED = "captures (not older stores)"
PRESENCE = (ALWAYS, WITH_KV, ROTARY_KV, CALIBRATED, CAPTURED)
#: dtype strings a variable may have; "str" is a variable-length UTF-8 string
DTYPES = ("float32", "int64", "str")
FILLS = {"float32": float("nan"), "int64": -1, "str": ""}


@dataclass(frozen=True)
class Dimension:
    """A dimension of the store and the dtype of its coordinate array (None: no coordinate)."""

    name: str
    coordinate: str | None


DIMENSIONS: tuple[Dimension, ...] = (
    Dimension("prompt", "int64"),
    Dimension("layer", "int64"),
    Dimension("head", "int64"),
    Dimension("kv_head", "int64"),
    Dimension("position", "int64"),
    Dimension("label", "str"),
    Dimension("demo", "int64"),
    Dimension("pooling", "str"),
    Dimension("kv_prompt", "int64"),
    Dimension("offset", "int64"),
    Dimension("head_dim", None),
)
DIMENSION_NAMES = tuple(d.name for d in DIMENSIONS)
KV_DIMS = ("kv_prompt", "layer", "kv_head", "demo", "offset", "head_dim")


@dataclass(frozen=True)
class Variable:
    """One data variable: named dimensions, dtype, fill value for missing entries, meaning, when present."""

    name: str
    dims: tuple[str, ...]
    dtype: str
    meaning: str
    present: str = ALWAYS

    @property
    def fill(self) -> object:
        """NaN for floats, -1 for integers, '' for strings (docs/store.md, 'Missing values')."""
        return FILLS[self.dtype]


def _v(name: str, dims: str, dtype: str, meaning: str, present: str = ALWAYS) -> Variable:
    return Variable(name, tuple(dims.split()), dtype, meaning, present)


_PD = "prompt demo"
_KV = " ".join(KV_DIMS)

VARIABLES: tuple[Variable, ...] = (
    _v("attention", "prompt layer head position", "float32",
       "attention of the prompt's last token (the query predicting the label) over every position, per layer and "
       "head; rows sum to 1"),
    _v("length", "prompt", "int64", "tokens in the prompt"),
    _v("split", "prompt", "str", "`select` (head selection) or `heldout`"),
    _v("test_index", "prompt", "int64", "row of the test point in the evaluation split"),
    _v("gold", "prompt", "int64", "gold label index"),
    _v("label_logits", "prompt label", "float32",
       "next-token logits at the last position for each label's token (`meta.label_token_ids`; first token under "
       "`readout: first_token`)"),
    _v("prediction", "prompt", "int64", "ŷ = argmax of `label_logits` (first label on ties)"),
    _v("label_logits_cf", "prompt label", "float32",
       "contextual calibration (Zhao et al. 2021): `label_logits` of the same prompt with the test input replaced "
       "by the content-free text `capture.content_free`", CALIBRATED),
    _v("demo_label", _PD, "int64", "label of each demonstration"),
    _v("demo_pool_index", _PD, "int64", "row of the demonstration in the demonstration pool"),
    _v("kernel_weight", "prompt pooling layer head demo", "float32",
       "per demonstration i: `max` / `mean` / `sum` of `attention` over positions `input_start` .. `label_pos` "
       "(inclusive: the input x_i, the template words and the label token; the delimiter is excluded), and "
       "`label` = attention on `label_pos` alone (`kicl.store.pooling.kernel_weights`). `max` is the paper's "
       "kernel weight"),
    _v("input_start", _PD, "int64", "first token of the input x_i"),
    _v("input_end", _PD, "int64", "end of the input x_i (exclusive)"),
    _v("label_pos", _PD, "int64", "position of the label token y_i"),
    _v("delim_start", _PD, "int64", "first token of the delimiter after the demonstration"),
    _v("delim_end", _PD, "int64", "end of that delimiter (exclusive)"),
    _v("block_start", _PD, "int64", "first token of the whole demonstration (template words and delimiter included)"),
    _v("block_end", _PD, "int64", "end of the whole demonstration (exclusive)"),
    _v("test_start", "prompt", "int64", "first token of the test input"),
    _v("test_end", "prompt", "int64", "end of the test input (exclusive)"),
    _v("sim_pred", _PD, "float32",
       "paper Eq. 9: P(o\\|x_test)ᵀ P(o\\|x_i), both next-token distributions over the whole vocabulary from the "
       "input run on its own (`capture.simpred_context`: `raw` text alone, or `template` = the input alone in the "
       "template, ending where the label would follow); each unique input is run once"),
    _v("demo_hubness", _PD, "float32",
       "the demonstration's mean `sim_pred` with the OTHER prompts' test inputs: (Σ_q P(o\\|x_test_q) − "
       "P(o\\|x_test_p))ᵀ P(o\\|x_i) / (N − 1) over the N prompts of the store (NaN when N = 1); a hub input, "
       "with much mass on frequent tokens, has a large `sim_pred` with every test input (Fig 4's partial-r "
       "covariate; stores without it get a store estimate)", CAPTURED),
    _v("test_top_token", "prompt", "int64", "argmax_o P(o\\|x_test) for the test input"),
    _v("demo_top_token", _PD, "int64", "argmax_o P(o\\|x_i) for each demonstration input (Fig 5a target)"),
    _v("prompt_text", "prompt", "str", "the full prompt"),
    _v("test_text", "prompt", "str", "the raw test input"),
    _v("demo_text", _PD, "str", "the raw input of each demonstration"),
    _v("keys", _KV, "float32",
       "keys at `label_pos + offset` as the layer uses them (after rotary embedding; equal to `past_key_values`)",
       WITH_KV),
    _v("keys_prerope", _KV, "float32",
       "keys before rotary embedding (output of the key projection, after the per-head key norm in models that "
       "have one, e.g. Qwen3 and Gemma-3)", ROTARY_KV),
    _v("values", _KV, "float32", "values at `label_pos + offset`", WITH_KV),
)  # fmt: skip

SCHEMA: dict[str, Variable] = {v.name: v for v in VARIABLES}


def _check_declarations() -> None:
    dims = set(DIMENSION_NAMES)
    for v in VARIABLES:
        if v.dtype not in DTYPES or v.present not in PRESENCE or not set(v.dims) <= dims:
            raise AssertionError(f"forward-store schema: bad declaration of {v.name!r}: {v}")
    if len(SCHEMA) != len(VARIABLES):
        raise AssertionError("forward-store schema: a variable is declared twice")


_check_declarations()


def forward_variables(
    rotary: bool, with_kv: bool, calibrated: bool = False, hubness: bool = False
) -> dict[str, Variable]:
    """The data variables a forward store has (coordinates excluded), by name, in declaration order;
    ``hubness``: with the variables every capture writes that older stores lack (``demo_hubness``)."""
    keep = {ALWAYS} | ({WITH_KV} if with_kv else set()) | ({ROTARY_KV} if with_kv and rotary else set())
    keep |= ({CALIBRATED} if calibrated else set()) | ({CAPTURED} if hubness else set())
    return {v.name: v for v in VARIABLES if v.present in keep}


@dataclass(frozen=True)
class StoreSizes:
    """How large a forward store is: the counts behind every dimension, the label names and the kv offsets."""

    n_prompts: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    n_positions: int
    label_names: Sequence[str]
    n_demos: int
    n_kv_prompts: int
    offsets: Sequence[int]
    head_dim: int


def layout(size: StoreSizes) -> tuple[dict[str, int], dict[str, np.ndarray]]:
    """The sizes of every dimension and the coordinate arrays of a store of these sizes.

    Coordinates: 0-based indices, the label names, ``POOLINGS``, the kv prompt ids (the first prompts) and
    the offsets relative to the label token; ``kv_prompt``/``offset`` only when keys/values are kept.
    """
    sizes = {
        "prompt": size.n_prompts, "layer": size.n_layers, "head": size.n_heads, "kv_head": size.n_kv_heads,
        "position": size.n_positions, "label": len(size.label_names), "demo": size.n_demos,
        "pooling": len(POOLINGS), "kv_prompt": size.n_kv_prompts, "offset": len(size.offsets),
        "head_dim": size.head_dim,
    }  # fmt: skip
    coords = {
        name: np.arange(sizes[name], dtype=np.int64)
        for name in ("prompt", "layer", "head", "kv_head", "position", "demo")
    }
    coords["label"] = np.array([str(n) for n in size.label_names], dtype=str)
    coords["pooling"] = np.array(POOLINGS, dtype=str)
    if size.n_kv_prompts:
        coords["kv_prompt"] = np.arange(size.n_kv_prompts, dtype=np.int64)
        coords["offset"] = np.asarray(size.offsets, dtype=np.int64)
    return sizes, coords


def dtype_matches(declared: str, actual: np.dtype) -> bool:
    """Whether an array's numpy dtype is the declared one (any numpy string/object dtype counts as 'str')."""
    actual = np.dtype(actual)
    if declared == "str":
        return actual.kind in "UOT"
    return actual == np.dtype(declared)


# ---------------------------------------------------------------------------------------------- docs/store.md

TABLE_BEGIN = "<!-- variables: generated from kicl/store/schema.py (python -m kicl.store.schema docs/store.md) -->"
TABLE_END = "<!-- end of generated variables -->"


def markdown_table() -> str:
    """The variable table of docs/store.md, generated from ``VARIABLES``."""
    lines = ["| variable | dims | dtype | present | meaning |", "|---|---|---|---|---|"]
    for v in VARIABLES:
        lines.append(f"| `{v.name}` | {', '.join(v.dims)} | {v.dtype} | {v.present} | {v.meaning} |")
    return "\n".join(lines)


def update_markdown(path: str | Path) -> bool:
    """Rewrite the generated table between the markers in ``path``; True when the file changed."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if TABLE_BEGIN not in text or TABLE_END not in text:
        raise ValueError(f"{path}: no generated-table markers ({TABLE_BEGIN!r} ... {TABLE_END!r})")
    head, rest = text.split(TABLE_BEGIN, 1)
    _, tail = rest.split(TABLE_END, 1)
    new = f"{head}{TABLE_BEGIN}\n{markdown_table()}\n{TABLE_END}{tail}"
    if new != text:
        path.write_text(new, encoding="utf-8")
    return new != text


if __name__ == "__main__":
    for target in sys.argv[1:] or ["docs/store.md"]:
        print(f"{target}: {'updated' if update_markdown(target) else 'up to date'}")
