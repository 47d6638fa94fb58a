"""Loading a causal LM for the capture: the capture attention switched on, its shape read."""

from __future__ import annotations

from kicl.capture.adapters import ModelShape, model_shape
from kicl.capture.session import CAPTURE_ATTENTION, register_capture_attention


def prepare_model(model) -> ModelShape:
    """Switch a loaded causal LM to the capture attention (plain ``sdpa`` outside a session); return its shape.

    Nothing else is attached to the model: hooks live only inside a :class:`CaptureSession`.
    """
    register_capture_attention()
    if model.config._attn_implementation != CAPTURE_ATTENTION:
        model.set_attn_implementation(CAPTURE_ATTENTION)
    return model_shape(model)


def load_capture_model(manifest: dict, dtype: str, device: str):
    """The model of ``manifest`` in ``dtype`` on ``device``, prepared for the capture: (model, shape)."""
    from kicl.data.models import load_model

    register_capture_attention()
    model = load_model(manifest, dtype=dtype, device=device, attn_implementation=CAPTURE_ATTENTION)
    return model, prepare_model(model)
