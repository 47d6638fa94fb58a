"""One padded batch through a capture session, and one shard of prompts into the store's per-prompt arrays."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from kicl.capture.adapters import ModelShape
from kicl.capture.handlers import Recorder
from kicl.capture.session import CaptureSession
from kicl.store.pooling import POOLINGS, kernel_weights, kv_positions


@dataclass
class BatchResult:
    """Outputs of one batch, in each prompt's own (unpadded) coordinates."""

    logits: torch.Tensor  # (B, V) float32, next-token logits at each prompt's last token
    rows: list[np.ndarray] | None = None  # per prompt: (layers, heads, length) float32
    keys: np.ndarray | None = None  # (Bk, layers, n_kv, S, head_dim)
    values: np.ndarray | None = None
    keys_prerope: np.ndarray | None = None


def predict(label_logits: np.ndarray) -> np.ndarray:
    """ŷ of each prompt: argmax over the label logits taken in float32; a tie goes to the lowest label index."""
    return np.asarray(label_logits, dtype=np.float32).argmax(axis=-1).astype(np.int64)


def forward_batch(
    model,
    sequences: Sequence[Sequence[int]],
    *,
    padding_side: str = "right",
    capture: bool = True,
    kv_rows: Sequence[int] = (),
    kv_positions: np.ndarray | None = None,
    n_layers: int | None = None,
) -> BatchResult:
    """Run one padded batch; return last-token logits and, with ``capture``, last-row attention and keys/values.

    A :class:`CaptureSession` with a :class:`Recorder` around one :meth:`CaptureSession.run` (padding: see
    :func:`kicl.capture.session.pad_batch`). ``kv_positions`` (len(kv_rows), S) are unpadded token positions.
    ``n_layers`` is accepted for compatibility; the session always checks that every layer was seen.
    """
    recorder = Recorder(kv_rows, kv_positions) if capture else None
    with CaptureSession(model, [recorder] if recorder else []) as session:
        logits = session.run(sequences, padding_side, check_layers=capture)
    result = BatchResult(logits=logits)
    if recorder is None:
        return result
    lengths = [len(s) for s in sequences]
    width = max(lengths)
    offsets = [width - n for n in lengths] if padding_side == "left" else [0] * len(lengths)
    rows = torch.stack(recorder.rows, dim=1).cpu().numpy()  # (B, layers, heads, width)
    result.rows = [rows[b, :, :, o : o + n] for b, (o, n) in enumerate(zip(offsets, lengths))]
    if len(kv_rows):
        result.keys = torch.stack(recorder.keys, dim=1).cpu().numpy()
        result.values = torch.stack(recorder.values, dim=1).cpu().numpy()
        if recorder.keys_prerope:
            result.keys_prerope = torch.stack(recorder.keys_prerope, dim=1).cpu().numpy()
    return result


@dataclass(frozen=True)
class SummedTestProbs:
    """Σ_q P(o|x_test_q) over every prompt q of the store (float64, (vocab,)) and the number of prompts N."""

    total: np.ndarray
    n_prompts: int

    @classmethod
    def of(cls, prompts: Sequence[dict], simpred) -> SummedTestProbs:
        """Sum the P(o|x_test) rows of ``prompts`` (``simpred(text)``: P(o|x), (vocab,)) in prompt order."""
        total = None
        for prompt in prompts:
            row = np.asarray(simpred(prompt["test_text"]), dtype=np.float64)
            total = row.copy() if total is None else total + row
        return cls(total, len(prompts))

    def others_mean(self, p_test: np.ndarray) -> np.ndarray | None:
        """Mean P(o|x_test_q) over the prompts q other than the one with ``p_test`` (None when N = 1)."""
        if self.n_prompts < 2:
            return None
        return (self.total - p_test.astype(np.float64)) / (self.n_prompts - 1)


def prompt_shard(
    model, shape: ModelShape, prompts: list[dict], meta: dict, options, n_demos: int, simpred, test_sum: SummedTestProbs
) -> dict[str, np.ndarray]:
    """All per-prompt outputs of one shard of prompts (dict of arrays with the shard's prompts first).

    :func:`forward_shard` plus ``sim_pred``, ``test_top_token`` and ``demo_top_token`` from ``simpred(text)``
    (P(o|x) of an input run on its own, a (vocab,) float32 array), and ``demo_hubness``: each demonstration's
    mean P(o|x_test_q)ᵀ P(o|x_i) over the other prompts q of the store (``test_sum``; NaN when N = 1).
    """
    out = forward_shard(model, shape, prompts, meta, options, n_demos)
    n = len(prompts)
    out["sim_pred"] = np.full((n, n_demos), np.nan, np.float32)
    out["demo_hubness"] = np.full((n, n_demos), np.nan, np.float32)
    out["demo_top_token"] = np.full((n, n_demos), -1, np.int64)
    out["test_top_token"] = np.empty(n, np.int64)
    for local, prompt in enumerate(prompts):
        p_test = simpred(prompt["test_text"])
        others = test_sum.others_mean(p_test)
        out["test_top_token"][local] = int(np.argmax(p_test))
        for d, demo in enumerate(prompt["demos"]):
            p_demo = simpred(demo["text"]).astype(np.float64)
            out["sim_pred"][local, d] = np.dot(p_test.astype(np.float64), p_demo)
            if others is not None:
                out["demo_hubness"][local, d] = np.dot(others, p_demo)
            out["demo_top_token"][local, d] = int(np.argmax(p_demo))
    return out


def forward_shard(
    model, shape: ModelShape, prompts: list[dict], meta: dict, options, n_demos: int
) -> dict[str, np.ndarray]:
    """The prompts' own forward outputs: last-row attention, label logits, kernel weights, keys and values
    (for prompts with ``prompt_id < options.kv_prompts``); batches of ``options.batch_size``, longest first."""
    n = len(prompts)
    width = max(len(p["input_ids"]) for p in prompts)
    label_ids = torch.as_tensor(meta["label_token_ids"], dtype=torch.long)
    offsets = list(options.kv_offsets)
    out = {
        "attention": np.full((n, shape.n_layers, shape.n_heads, width), np.nan, np.float32),
        "label_logits": np.empty((n, len(label_ids)), np.float32),
        "kernel_weight": np.empty((n, len(POOLINGS), shape.n_layers, shape.n_heads, n_demos), np.float32),
    }
    kv_local = [i for i, p in enumerate(prompts) if p["prompt_id"] < options.kv_prompts]
    kv_shape = (len(kv_local), shape.n_layers, shape.n_kv_heads, n_demos, len(offsets), shape.head_dim)
    kv_names = ["keys", "values"] + (["keys_prerope"] if shape.rotary else [])
    for name in kv_names:
        out[name] = np.full(kv_shape, np.nan, np.float32)
    kv_slot = {local: slot for slot, local in enumerate(kv_local)}
    order = np.argsort([-len(p["input_ids"]) for p in prompts], kind="stable")
    for start in range(0, n, options.batch_size):
        members = order[start : start + options.batch_size].tolist()
        kv_members = [b for b, local in enumerate(members) if local in kv_slot]
        positions, valid = [], []
        for b in kv_members:
            prompt = prompts[members[b]]
            label_pos = [d["label_pos"] for d in prompt["demos"]]
            pos, ok = kv_positions(label_pos, offsets, len(prompt["input_ids"]), n_demos)
            positions.append(pos)
            valid.append(ok)
        result = forward_batch(
            model, [prompts[m]["input_ids"] for m in members], padding_side=options.padding_side,
            kv_rows=kv_members, kv_positions=np.array(positions) if positions else None,
            n_layers=shape.n_layers,
        )  # fmt: skip
        out["label_logits"][members] = result.logits.cpu()[:, label_ids].numpy()
        for b, local in enumerate(members):
            row = result.rows[b]
            out["attention"][local, :, :, : row.shape[-1]] = row
            demos = prompts[local]["demos"]
            starts = np.full(n_demos, -1, np.int64)
            labels = np.full(n_demos, -1, np.int64)
            starts[: len(demos)] = [d["input_span"][0] for d in demos]
            labels[: len(demos)] = [d["label_pos"] for d in demos]
            out["kernel_weight"][local] = kernel_weights(row, starts, labels)
        for k, b in enumerate(kv_members):
            slot = kv_slot[members[b]]
            mask = valid[k]
            for name, values in (
                ("keys", result.keys),
                ("values", result.values),
                ("keys_prerope", result.keys_prerope),
            ):
                if name in out:
                    # (layers, n_kv, demos*offsets, d) -> (layers, n_kv, demos, offsets, d)
                    block = values[k].reshape(shape.n_layers, shape.n_kv_heads, n_demos, len(offsets), shape.head_dim)
                    out[name][slot] = np.where(mask[None, None, :, :, None], block, np.nan)
    return out


def content_free_piece(tokenizer, meta: dict, text: str) -> list[int]:
    """Token ids of the content-free test input ``text`` (e.g. "N/A") as the prompt builder tokenises a test input:
    the whitespace that ends the template's input prefix goes in front of it (kicl.prompts.pieces)."""
    from kicl.prompts.pieces import PieceTokenizer, split_trailing_spaces

    _, space = split_trailing_spaces(meta["template"]["input_prefix"])
    return list(PieceTokenizer(tokenizer).encode(space + text))


def content_free_logits(model, prompts: list[dict], meta: dict, options, piece: Sequence[int]) -> np.ndarray:
    """Label logits (len(prompts), labels) of each prompt with its test input replaced by ``piece`` (the same
    demonstrations, labels and template): the content-free readout of contextual calibration."""
    label_ids = torch.as_tensor(meta["label_token_ids"], dtype=torch.long)
    sequences = [
        list(p["input_ids"][: p["test_span"][0]]) + list(piece) + list(p["input_ids"][p["test_span"][1] :])
        for p in prompts
    ]
    out = np.empty((len(prompts), len(label_ids)), np.float32)
    for start in range(0, len(prompts), options.batch_size):
        rows = list(range(start, min(start + options.batch_size, len(prompts))))
        result = forward_batch(model, [sequences[r] for r in rows], padding_side=options.padding_side, capture=False)
        out[rows] = result.logits.float().cpu()[:, label_ids].numpy()
    return out
