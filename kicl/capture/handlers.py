"""Handlers of a :class:`kicl.capture.session.CaptureSession`: record, or intervene in, each layer's attention.

* :class:`Recorder`: the forward store's capture. The last query row of every head in float32, and keys and
  values (after and, through the key-projection hooks, before rotary embedding) at chosen positions of chosen
  rows.
* :class:`HeadOutputs`: each head's output at the last real token (what mean ablation replaces a head by).
* :class:`HeadAblation`: scale, zero, or replace by a given vector the output of chosen (layer, head)s, at every
  position or at the last real token only.
* :class:`AttentionKnockout`: for chosen heads, remove the last token's attention to chosen positions and
  renormalise over the rest, i.e. recompute the head's last-row output from the masked softmax.

A head's "output" is its slice of the attention output (B, T, heads, head_dim) before the output projection,
so zeroing it equals zeroing that head's input slice of the output projection.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from kicl.capture.session import AttentionCall, BatchInputs, Handler

ABLATION_MODES = ("zero", "scale", "mean")
ABLATION_ROWS = ("all", "last")


class Recorder(Handler):
    """Last query rows (and keys/values at ``kv_positions`` of batch rows ``kv_rows``) of one batch.

    ``kv_positions`` (len(kv_rows), S) are unpadded token positions (already inside each prompt). After the run
    ``rows`` holds one (B, heads, T) float32 tensor per layer; ``keys``/``values``/``keys_prerope`` one
    (Bk, n_kv, S, d) float32 tensor per layer.
    """

    def __init__(self, kv_rows: Iterable[int] = (), kv_positions: np.ndarray | None = None):
        self._kv_rows_host = list(kv_rows)
        self._kv_positions_host = kv_positions
        self.kv_rows = self.kv_positions = None
        self.wants_prerope = bool(self._kv_rows_host)
        self.rows: list[torch.Tensor] = []
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.keys_prerope: list[torch.Tensor] = []
        self._pending_prerope: dict[int, torch.Tensor] = {}

    def begin(self, batch: BatchInputs, session) -> None:
        if self._kv_rows_host:
            device = batch.query_index.device
            rows = torch.as_tensor(self._kv_rows_host, dtype=torch.long)
            shift = batch.offsets[rows][:, None]
            self.kv_rows = rows.to(device)
            self.kv_positions = (torch.as_tensor(self._kv_positions_host, dtype=torch.long) + shift).to(device)

    def gather_kv(self, states: torch.Tensor) -> torch.Tensor:
        """(B, n_kv, T, d) states -> (Bk, n_kv, S, d) at the kv rows and positions (dtype kept)."""
        rows = states[self.kv_rows]
        index = self.kv_positions[:, None, :, None].expand(-1, rows.shape[1], -1, rows.shape[-1])
        return torch.gather(rows, 2, index)

    def prerope(self, layer: int, states: torch.Tensor, norm) -> None:
        keys = self.gather_kv(states)
        self._pending_prerope[layer] = (norm(keys) if norm is not None else keys).float()

    def attention(self, call: AttentionCall, output: torch.Tensor) -> torch.Tensor:
        self.rows.append(call.last_row())
        if self.kv_rows is not None:
            self.keys.append(self.gather_kv(call.key).float())
            self.values.append(self.gather_kv(call.value).float())
            prerope = self._pending_prerope.pop(call.layer, None)
            if prerope is not None:
                self.keys_prerope.append(prerope)
        return output


def _last_rows(output: torch.Tensor, batch: BatchInputs) -> tuple[torch.Tensor, torch.Tensor]:
    rows = torch.arange(output.shape[0], device=output.device)
    return rows, batch.query_row.to(output.device)


class HeadOutputs(Handler):
    """Every head's output at each row's last real token: after the run, ``outputs`` is (B, layers, heads, d)
    float32 on the host."""

    def __init__(self):
        self._layers: list[torch.Tensor] = []
        self.outputs: torch.Tensor | None = None

    def begin(self, batch, session) -> None:
        self._layers, self._batch = [], batch

    def attention(self, call: AttentionCall, output: torch.Tensor) -> torch.Tensor:
        rows, last = _last_rows(output, call.batch)
        self._layers.append(output[rows, last].float().cpu())  # (B, heads, d)
        return output

    def end(self) -> None:
        self.outputs = torch.stack(self._layers, dim=1)


def _heads_by_layer(heads: Iterable[tuple[int, int]]) -> dict[int, list[int]]:
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(int(layer), []).append(int(head))
    return {layer: sorted(set(hs)) for layer, hs in by_layer.items()}


class HeadAblation(Handler):
    """Change the output of chosen (layer, head)s.

    ``mode``: ``zero``; ``scale`` (multiply by ``scale``); ``mean`` (replace by ``means[layer, head]``, a
    (layers, heads, d) array, e.g. the head's mean last-token output over a reference set). ``rows``: ``all``
    positions or only each row's ``last`` real token (where the next-token prediction is read).
    """

    def __init__(
        self,
        heads: Iterable[tuple[int, int]],
        mode: str = "zero",
        *,
        scale: float = 0.0,
        means: np.ndarray | torch.Tensor | None = None,
        rows: str = "all",
    ):
        if mode not in ABLATION_MODES:
            raise ValueError(f"ablation mode must be one of {ABLATION_MODES}, got {mode!r}")
        if rows not in ABLATION_ROWS:
            raise ValueError(f"ablation rows must be one of {ABLATION_ROWS}, got {rows!r}")
        if mode == "mean" and means is None:
            raise ValueError("mean ablation needs `means` (layers, heads, head_dim)")
        self.heads = _heads_by_layer(heads)
        self.mode, self.scale, self.rows = mode, float(scale), rows
        self.means = None if means is None else torch.as_tensor(np.asarray(means), dtype=torch.float32)

    def attention(self, call: AttentionCall, output: torch.Tensor) -> torch.Tensor:
        heads = self.heads.get(call.layer)
        if not heads:
            return output
        index = torch.as_tensor(heads, dtype=torch.long, device=output.device)
        if self.rows == "all":
            target = output[:, :, index]  # (B, T, k, d)
        else:
            rows, last = _last_rows(output, call.batch)
            target = output[rows, last][:, index]  # (B, k, d)
        if self.mode == "zero":
            new = torch.zeros_like(target)
        elif self.mode == "scale":
            new = target * self.scale
        else:
            new = self.means[call.layer, heads].to(output.device, output.dtype).expand_as(target)
        if self.rows == "all":
            output[:, :, index] = new
        else:
            output[rows[:, None], last[:, None], index[None, :]] = new
        return output


class AttentionKnockout(Handler):
    """For the chosen heads, the last real token no longer attends to chosen positions (renormalised softmax).

    ``positions(batch_row) -> list of unpadded positions`` is set per batch with :meth:`set_positions`
    (a list with one entry per batch row). The head's last-row output is recomputed in float32 as
    ``softmax(scores with those positions at -inf) @ V`` and cast to the model's dtype; other rows and heads
    keep the fused ``sdpa`` output.
    """

    def __init__(self, heads: Iterable[tuple[int, int]]):
        self.heads = _heads_by_layer(heads)
        self._positions: list[list[int]] | None = None
        self._mask: torch.Tensor | None = None

    def set_positions(self, positions: list[list[int]]) -> None:
        self._positions = [list(map(int, p)) for p in positions]

    def begin(self, batch: BatchInputs, session) -> None:
        if self._positions is None or len(self._positions) != len(batch.lengths):
            raise ValueError("AttentionKnockout: set_positions() with one list per batch row before each run")
        mask = torch.zeros(len(batch.lengths), batch.width, dtype=torch.bool)
        for row, (positions, offset) in enumerate(zip(self._positions, batch.offsets.tolist())):
            for position in positions:
                if not 0 <= position < int(batch.lengths[row]):
                    length = int(batch.lengths[row])
                    raise ValueError(f"knockout position {position} is outside row {row}'s {length} tokens")
                mask[row, position + offset] = True
        self._mask = mask.to(batch.query_index.device)

    def attention(self, call: AttentionCall, output: torch.Tensor) -> torch.Tensor:
        heads = self.heads.get(call.layer)
        if not heads:
            return output
        index = torch.as_tensor(heads, dtype=torch.long, device=output.device)
        scores = call.last_row_scores()[:, index]  # (B, k, T)
        probs = torch.softmax(scores.masked_fill(self._mask[:, None, :], float("-inf")), dim=-1)
        n_heads, n_kv = call.query.shape[1], call.key.shape[1]
        groups = index // (n_heads // n_kv)
        values = call.value[:, groups].float()  # (B, k, T, d)
        new = torch.matmul(probs[:, :, None, :], values)[:, :, 0]  # (B, k, d)
        rows, last = _last_rows(output, call.batch)
        output[rows[:, None], last[:, None], index[None, :]] = new.to(output.dtype)
        return output

    def end(self) -> None:
        self._positions = None
