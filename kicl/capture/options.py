"""The ``capture:`` config section, resolved and checked (defaults and bounds: schemas/config.schema.yaml only)."""

from __future__ import annotations

from dataclasses import dataclass

from kicl.config import schema_enum, section_values
from kicl.devices import resolve_device, resolve_dtype

SIMPRED_CONTEXTS = schema_enum("capture", "simpred_context")
PADDING_SIDES = schema_enum("capture", "padding_side")


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
    dtype_check_prompts: int
    dtype_check_min_agreement: float
    dtype_check_max_kernel_diff: float
    calibration: bool
    content_free: str
    intra_op_threads: int

    @classmethod
    def from_config(cls, capture: dict | None = None, manifest: dict | None = None) -> CaptureOptions:
        """Schema defaults, overridden by ``capture`` and checked against the schema (one
        :class:`~kicl.config.ConfigError` listing every problem); ``auto`` device and dtype resolved by kicl.devices
        from the model manifest (then cuda if available / float32). The dtype may be ``AUTO_BF16`` (a float32 model
        on a CPU with native bfloat16): :func:`kicl.capture.dtype_check.settle_dtype` then decides."""
        manifest = manifest or {}
        values = section_values({"capture": capture or {}}, "capture")
        values["device"] = resolve_device(values["device"], manifest.get("device"), fallback=default_device())
        values["dtype"] = resolve_dtype(values["dtype"], manifest.get("dtype"), device=values["device"])
        values["kv_offsets"] = tuple(values["kv_offsets"])
        return cls(**values)

    def fix_threads(self, job_threads: int | None = None) -> int:
        """Set torch's intra-op threads for a job that computes stored numbers and return them:
        ``intra_op_threads`` whatever the job's cores (the reductions inside a matmul, and so the last bits of
        every number, depend on the thread count), or with 0 the job's ``job_threads`` (torch's own default when
        None): faster on many cores, but the numbers then depend on the machine."""
        import torch

        threads = self.intra_op_threads or job_threads or torch.get_num_threads()
        torch.set_num_threads(threads)
        return threads
