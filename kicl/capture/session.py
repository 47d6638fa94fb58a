"""A capture session: the model runs with fused attention while handlers read or change each layer's attention.

:class:`CaptureSession` is a context manager. On entry it registers the attention function
:data:`CAPTURE_ATTENTION` with transformers' attention interface (and switches the model to it), points every
attention module at the session and, when a handler asks for them, hooks the key projections for the keys
before rotary embedding. On exit it removes the hooks and the pointers and restores the model's previous
attention implementation, so a model used after a session (or in a second one) behaves like a plain model.

The attention function computes each layer exactly like ``sdpa``
(``torch.nn.functional.scaled_dot_product_attention``) and then hands an :class:`AttentionCall` to the
session's handlers in order (kicl.capture.handlers): each may read the layer's queries, keys and values and may
change the layer's output (B, T, heads, head_dim) before the output projection. Without a session the function
is plain ``sdpa``. No state lives at module level.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from kicl.capture.adapters import ModelShape, attention_modules, model_shape, prerope_key_module
from kicl.capture.options import PADDING_SIDES, CaptureError

CAPTURE_ATTENTION = "kicl_capture"
_SESSION_ATTR = "_kicl_capture_session"
_UNSUPPORTED = ("position_bias", "s_aux", "sinks", "softcap")


def _capture_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """``sdpa`` attention, then the handlers of the session the module belongs to (if any)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    output, _ = sdpa_attention_forward(
        module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
    )
    session = module.__dict__.get(_SESSION_ATTR)
    if session is not None:
        output = session._attention(module, query, key, value, attention_mask, scaling, kwargs, output)
    return output, None


def register_capture_attention() -> None:
    """Register :data:`CAPTURE_ATTENTION` with transformers (attention function + sdpa-style boolean masks)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(CAPTURE_ATTENTION, _capture_attention)
    AttentionMaskInterface.register(CAPTURE_ATTENTION, sdpa_mask)


@dataclass
class BatchInputs:
    """One padded batch: what goes into the model and where each prompt sits in it."""

    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor | None  # (B, T) for left padding, None for right padding
    position_ids: torch.Tensor  # (B, T)
    lengths: torch.Tensor  # (B,) real tokens per row (host)
    offsets: torch.Tensor  # (B,) padded position of each row's first real token (host)
    query_index: torch.Tensor  # (B,) padded position of each row's last real token (device)
    query_row: torch.Tensor | None = None  # (B,) that token's row among the queries; None = query_index
    #                                        (they differ in a cached step, where the queries are the last tokens)

    def __post_init__(self):
        if self.query_row is None:
            self.query_row = self.query_index

    @property
    def width(self) -> int:
        """Key positions per row (padded), cached ones included."""
        return int(self.query_index.max()) + 1 if self.attention_mask is None else self.attention_mask.shape[1]


def pad_batch(sequences: Sequence[Sequence[int]], padding_side: str, device) -> BatchInputs:
    """Pad token sequences into one batch.

    Right padding runs without a mask (every real token only sees real tokens under the causal mask) and
    positions 0..T-1; left padding passes the padding mask and positions counted from each row's first token.
    Padding repeats a row's first (left) or last (right) token: never read, and no pad-token warnings.
    """
    if padding_side not in PADDING_SIDES:
        raise CaptureError(f"capture.padding_side must be one of {PADDING_SIDES}, got {padding_side!r}")
    lengths = torch.tensor([len(s) for s in sequences])
    batch, width = len(sequences), int(lengths.max())
    offsets = width - lengths if padding_side == "left" else torch.zeros_like(lengths)
    input_ids = torch.empty(batch, width, dtype=torch.long)
    for row, (sequence, offset) in enumerate(zip(sequences, offsets.tolist())):
        input_ids[row] = sequence[0] if padding_side == "left" else sequence[-1]
        input_ids[row, offset : offset + len(sequence)] = torch.as_tensor(sequence, dtype=torch.long)
    if padding_side == "left":
        attention_mask = (torch.arange(width)[None, :] >= offsets[:, None]).long()
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        attention_mask = attention_mask.to(device)
    else:
        attention_mask = None
        position_ids = torch.arange(width)[None, :].expand(batch, width)
    query_index = (offsets + lengths - 1).to(device)
    return BatchInputs(input_ids.to(device), attention_mask, position_ids.to(device), lengths, offsets, query_index)


class AttentionCall:
    """One layer's attention inside a session: its inputs, the batch, and the last query row on demand."""

    def __init__(self, layer, module, qkv: tuple, attention_mask, scaling, kwargs, batch: BatchInputs):
        self.layer = layer
        self.module = module
        self.query, self.key, self.value = qkv  # (B, H, T, d), (B, n_kv, T, d), (B, n_kv, T, d)
        self.attention_mask = attention_mask
        self.scaling = scaling if scaling is not None else self.query.shape[-1] ** -0.5
        self.kwargs = kwargs
        self.batch = batch
        self._scores = None

    def last_row_scores(self) -> torch.Tensor:
        """(B, heads, T) float32 pre-softmax scores of each row's last real token, masked positions at -inf.

        ``q_last · Kᵀ · scaling + mask`` from the layer's own (post-rotary, GQA-grouped) queries and keys,
        with causality and the layer's mask (padding, sliding window) applied.
        """
        if self._scores is not None:
            return self._scores
        for unsupported in _UNSUPPORTED:
            if self.kwargs.get(unsupported) is not None:
                raise CaptureError(
                    f"{type(self.module).__name__} uses {unsupported!r} in attention, which the last-row capture "
                    "does not model"
                )
        query, key, query_index = self.query, self.key, self.batch.query_index
        query_row = self.batch.query_row
        batch, n_heads, q_len, head_dim = query.shape
        n_kv, kv_len = key.shape[1], key.shape[2]
        if q_len != kv_len and q_len != 1:
            raise CaptureError("the capture needs a full forward pass, or one cached step of one token per row")
        rows = torch.arange(batch, device=query.device)
        q_last = query[rows, :, query_row].float().reshape(batch, n_kv, n_heads // n_kv, head_dim)
        scores = torch.matmul(q_last, key.float().transpose(-1, -2)).reshape(batch, n_heads, kv_len) * self.scaling
        positions = torch.arange(kv_len, device=query.device)
        causal = positions[None, :] <= query_index[:, None]
        scores = scores.masked_fill(~causal[:, None, :], float("-inf"))
        if self.attention_mask is not None:
            mask = self.attention_mask
            mask_rows = rows if mask.shape[0] == batch else torch.zeros_like(rows)
            mask_row = mask[mask_rows, :, query_row]  # (B, 1 or H, T)
            if mask_row.dtype == torch.bool:
                scores = scores.masked_fill(~mask_row, float("-inf"))
            else:
                scores = scores + mask_row.float()
        self._scores = scores
        return scores

    def last_row(self) -> torch.Tensor:
        """(B, heads, T) float32 attention of each row's last real token (softmax of :meth:`last_row_scores`)."""
        return torch.softmax(self.last_row_scores(), dim=-1)


class Handler:
    """Base class of session handlers; every method is optional."""

    wants_prerope = False  # True: the session hooks key projections and calls prerope() with their output

    def begin(self, batch: BatchInputs, session: CaptureSession) -> None:
        """Before a batch runs."""

    def prerope(self, layer: int, states: torch.Tensor, norm) -> None:
        """Key-projection output of ``layer`` as (B, n_kv, T, d) (``norm``: the per-head key norm or None)."""

    def attention(self, call: AttentionCall, output: torch.Tensor) -> torch.Tensor:
        """A layer's attention output (B, T, heads, d); return it (changed or not)."""
        return output

    def end(self) -> None:
        """After a batch ran."""


class CaptureSession:
    """Context manager that runs a model with the capture attention and a list of handlers (module docstring)."""

    def __init__(self, model, handlers: Sequence[Handler] = ()):
        self.model = model
        self.handlers = list(handlers)
        self.shape: ModelShape | None = None
        self._modules: list[torch.nn.Module] = []
        self._layer_of: dict[int, int] = {}
        self._hooks = []
        self._previous_attention = None
        self._batch: BatchInputs | None = None
        self.layers_seen = 0

    def __enter__(self) -> CaptureSession:
        register_capture_attention()
        self.shape = model_shape(self.model)
        self._previous_attention = self.model.config._attn_implementation
        try:
            if self._previous_attention != CAPTURE_ATTENTION:
                self.model.set_attn_implementation(CAPTURE_ATTENTION)
            self._modules = attention_modules(self.model)
            for index, module in enumerate(self._modules):
                if module.__dict__.get(_SESSION_ATTR) is not None:
                    raise CaptureError(f"{type(self.model).__name__} is already in a capture session")
                module.__dict__[_SESSION_ATTR] = self
                self._layer_of[id(module)] = index
            if self.shape.rotary and any(h.wants_prerope for h in self.handlers):
                for index, module in enumerate(self._modules):
                    projection, norm = prerope_key_module(module)
                    self._hooks.append(projection.register_forward_hook(self._prerope_hook(index, norm)))
        except BaseException:
            self._close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._close()

    def _close(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        for module in self._modules:
            if module.__dict__.get(_SESSION_ATTR) is self:
                del module.__dict__[_SESSION_ATTR]
        self._modules, self._layer_of = [], {}
        if self._previous_attention is not None and self.model.config._attn_implementation != self._previous_attention:
            self.model.set_attn_implementation(self._previous_attention)

    def _prerope_hook(self, layer: int, norm):
        head_dim = self.shape.head_dim

        def hook(_module, _inputs, output):
            if self._batch is None:
                return
            states = output.reshape(output.shape[0], output.shape[1], -1, head_dim).transpose(1, 2)
            for handler in self.handlers:
                if handler.wants_prerope:
                    handler.prerope(layer, states, norm)

        return hook

    def _attention(self, module, query, key, value, attention_mask, scaling, kwargs, output):
        if self._batch is None:
            return output
        call = AttentionCall(
            self._layer_of[id(module)], module, (query, key, value), attention_mask, scaling, kwargs, self._batch
        )
        self.layers_seen += 1
        for handler in self.handlers:
            output = handler.attention(call, output)
        return output

    def _forward(self, batch: BatchInputs, check_layers: bool, what: str, cache=None) -> torch.Tensor:
        """One forward pass of `batch` through the handlers (begin, forward, layer check, end); (B, V) float32
        logits at each row's query token. With a `cache` (a :meth:`prefill`), it is cropped back afterwards."""
        for handler in self.handlers:
            handler.begin(batch, self)
        self._batch, self.layers_seen = batch, 0
        inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
        inputs["position_ids"] = batch.position_ids
        if cache is None:
            inputs.update(logits_to_keep=batch.query_index[:, None], use_cache=False)
        else:
            inputs.update(cache=cache.cache, use_cache=True)
        try:
            with torch.inference_mode():
                out = self.model(**inputs)
        finally:
            self._batch = None
            if cache is not None:
                cache.cache.crop(cache.length - cache.cache.get_seq_length())  # remove the step again
        if check_layers and self.layers_seen != self.shape.n_layers:
            raise CaptureError(
                f"{type(self.model).__name__}: {what} saw {self.layers_seen} of {self.shape.n_layers} attention layers"
                + ("" if cache is not None else "; this architecture does not route attention through transformers' "
                   "attention interface")
            )  # fmt: skip
        for handler in self.handlers:
            handler.end()
        return out.logits[:, -1, :].float()

    def run(self, sequences: Sequence[Sequence[int]], padding_side: str = "right", check_layers: bool = True):
        """One padded forward pass through the handlers; returns (B, V) float32 logits at each last real token."""
        if not self._modules:
            raise CaptureError("CaptureSession.run outside its `with` block")
        batch = pad_batch(sequences, padding_side, self.model.device)
        return self._forward(batch, check_layers, "the capture")

    # ---- interventions at the last token only: the prefix once, then one cached step per intervention

    def prefill(self, sequences: Sequence[Sequence[int]]) -> Prefix:
        """Run every sequence but its last token once (left padding, handlers not called) and keep the cache.

        An intervention that changes only the last token's attention leaves every earlier position as it is,
        so :meth:`step` then runs only the last tokens against this cache, once per intervention.
        """
        from transformers import DynamicCache

        if not self._modules:
            raise CaptureError("CaptureSession.prefill outside its `with` block")
        if min(len(s) for s in sequences) < 2:
            raise CaptureError("a cached last-token step needs sequences of at least two tokens")
        device = self.model.device
        prefix = pad_batch([s[:-1] for s in sequences], "left", device)
        cache = DynamicCache()
        with torch.inference_mode():
            self.model(
                input_ids=prefix.input_ids,
                attention_mask=prefix.attention_mask,
                position_ids=prefix.position_ids,
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            )
        batch_size, width = prefix.input_ids.shape
        lengths = prefix.lengths + 1
        step = BatchInputs(
            input_ids=torch.tensor([[s[-1]] for s in sequences], dtype=torch.long, device=device),
            attention_mask=torch.cat(
                [prefix.attention_mask, torch.ones(batch_size, 1, dtype=torch.long, device=device)], dim=1
            ),
            position_ids=(lengths - 1)[:, None].to(device),
            lengths=lengths,
            offsets=prefix.offsets,
            query_index=torch.full((batch_size,), width, dtype=torch.long, device=device),
            query_row=torch.zeros(batch_size, dtype=torch.long, device=device),
        )
        return Prefix(cache, step, width)

    def step(self, prefix: Prefix, check_layers: bool = True) -> torch.Tensor:
        """The last tokens of a :meth:`prefill` through the handlers; (B, V) float32 logits. The cache is
        cropped back afterwards, so the same prefix serves every intervention."""
        return self._forward(prefix.step, check_layers, "the cached step", cache=prefix)


@dataclass
class Prefix:
    """The key/value cache of a batch's prefixes and the inputs of its last-token step."""

    cache: object
    step: BatchInputs
    length: int
