"""Per-family knowledge of the capture: where the attention modules and the pre-rotary keys are.

Everything else the capture needs comes through transformers' attention interface, so any architecture
whose attention goes through ``ALL_ATTENTION_FUNCTIONS`` works (GPT-J, GPT-2, the Llama family, Qwen2/3,
Mistral, Gemma-3, ...).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kicl.capture.options import CaptureError


@dataclass(frozen=True)
class ModelShape:
    """What the store needs to know about a model."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    rotary: bool
    vocab_size: int


def attention_modules(model) -> list[torch.nn.Module]:
    """The self-attention modules in layer order (modules with ``layer_idx`` whose class name says Attention)."""
    found = [
        module
        for module in model.modules()
        if "Attention" in type(module).__name__ and isinstance(getattr(module, "layer_idx", None), int)
    ]
    return sorted(found, key=lambda module: module.layer_idx)


def prerope_key_module(attention: torch.nn.Module) -> tuple[torch.nn.Module | None, torch.nn.Module | None]:
    """(key projection, per-head key norm or None): the key before rotary embedding is norm(projection(x)).

    The norm (Qwen3, Gemma-3) acts on each head vector on its own, so it is applied to the gathered keys only.
    """
    projection = next(
        (m for n in ("k_proj", "key") if isinstance(m := getattr(attention, n, None), torch.nn.Module)), None
    )
    norm = getattr(attention, "k_norm", None)
    return projection, norm if isinstance(norm, torch.nn.Module) else None


def model_shape(model) -> ModelShape:
    """Layers, heads, key/value heads, head size, rotary or not, vocabulary size of a loaded causal LM."""
    config = model.config.get_text_config()
    attentions = attention_modules(model)
    n_layers = config.num_hidden_layers
    if len(attentions) != n_layers:
        raise CaptureError(
            f"{type(model).__name__}: found {len(attentions)} attention modules for {n_layers} layers; "
            "this architecture is not supported by the capture"
        )
    n_heads = config.num_attention_heads
    n_kv_heads = getattr(config, "num_key_value_heads", None) or n_heads
    head_dim = getattr(attentions[0], "head_dim", None) or config.hidden_size // n_heads
    rotary = any("Rotary" in type(module).__name__ for module in model.modules())
    if rotary:
        for attention in attentions:
            if prerope_key_module(attention)[0] is None:
                raise CaptureError(f"{type(attention).__name__}: no key projection found for pre-rotary keys")
    return ModelShape(n_layers, n_heads, n_kv_heads, head_dim, rotary, model.get_output_embeddings().out_features)
