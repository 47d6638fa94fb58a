"""The ``capture:`` config section, resolved and checked (defaults: schemas/config.schema.yaml only)."""

from __future__ import annotations

from dataclasses import dataclass, fields

from kicl.config import DTYPE_NAMES, defaults_for, resolve_device, resolve_dtype

SIMPRED_CONTEXTS = ("raw", "template")
PADDING_SIDES = ("right", "left")


class CaptureError(ValueError):
    """Bad capture input (prompt file, model, options); raised before the expensive work."""


def default_device() -> str:
    """Where ``auto`` ends up when neither the config nor the model names a device."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class CaptureOptions:
    """The ``capture:`` config section, resolved: build it with :meth:`from_config` (defaults from the schema)."""

    dtype: str
    device: str
    batch_size: int
    shard_size: int
    kv_prompts: int
    kv_offsets: tuple[int, ...]
    simpred_context: str
    padding_side: str

    @classmethod
    def from_config(cls, capture: dict | None = None, manifest: dict | None = None) -> CaptureOptions:
        """Schema defaults, overridden by ``capture``; ``auto`` dtype/device resolved by kicl.config from the
        model manifest (then float32 / cuda if available)."""
        manifest = manifest or {}
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in defaults_for("capture").items() if k in names}
        values.update({k: v for k, v in (capture or {}).items() if k in names})
        values["dtype"] = resolve_dtype(values["dtype"], manifest.get("dtype"))
        values["device"] = resolve_device(values["device"], manifest.get("device"), fallback=default_device())
        values["kv_offsets"] = tuple(values["kv_offsets"])
        options = cls(**values)
        options.check()
        return options

    def check(self) -> None:
        if self.dtype not in DTYPE_NAMES:
            raise CaptureError(f"capture.dtype must be one of {sorted(DTYPE_NAMES)} or auto, got {self.dtype!r}")
        if self.simpred_context not in SIMPRED_CONTEXTS:
            raise CaptureError(
                f"capture.simpred_context must be one of {SIMPRED_CONTEXTS}, got {self.simpred_context!r}"
            )
        if self.padding_side not in PADDING_SIDES:
            raise CaptureError(f"capture.padding_side must be one of {PADDING_SIDES}, got {self.padding_side!r}")
        for key in ("batch_size", "shard_size"):
            if getattr(self, key) < 1:
                raise CaptureError(f"capture.{key} must be >= 1")
        if self.kv_prompts < 0 or not self.kv_offsets:
            raise CaptureError("capture.kv_prompts must be >= 0 and capture.kv_offsets non-empty")
