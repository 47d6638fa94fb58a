"""The ``capture:`` config section, resolved and checked (defaults: schemas/config.schema.yaml only)."""

from __future__ import annotations

from dataclasses import dataclass, fields

from kicl.config import AUTO_BF16, DTYPE_NAMES, defaults_for, resolve_device, resolve_dtype

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
    dtype_check_prompts: int
    dtype_check_min_agreement: float
    dtype_check_max_kernel_diff: float
    calibration: bool
    content_free: str
    intra_op_threads: int

    @classmethod
    def from_config(cls, capture: dict | None = None, manifest: dict | None = None) -> CaptureOptions:
        """Schema defaults, overridden by ``capture``; ``auto`` device and dtype resolved by kicl.config from the
        model manifest (then cuda if available / float32). The dtype may be ``AUTO_BF16`` (a float32 model on a
        CPU with native bfloat16): :func:`kicl.capture.dtype_check.settle_dtype` then decides."""
        manifest = manifest or {}
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in defaults_for("capture").items() if k in names}
        values.update({k: v for k, v in (capture or {}).items() if k in names})
        values["device"] = resolve_device(values["device"], manifest.get("device"), fallback=default_device())
        values["dtype"] = resolve_dtype(values["dtype"], manifest.get("dtype"), device=values["device"])
        values["kv_offsets"] = tuple(values["kv_offsets"])
        options = cls(**values)
        options.check()
        return options

    def check(self) -> None:
        if self.dtype not in (*DTYPE_NAMES, AUTO_BF16):
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
        if self.dtype_check_prompts < 1:
            raise CaptureError("capture.dtype_check_prompts must be >= 1")
        if not 0 <= self.dtype_check_min_agreement <= 1:
            raise CaptureError("capture.dtype_check_min_agreement must be within [0, 1]")
        if self.dtype_check_max_kernel_diff < 0:
            raise CaptureError("capture.dtype_check_max_kernel_diff must be >= 0")
        if self.intra_op_threads < 0:
            raise CaptureError(f"capture.intra_op_threads must be >= 0, got {self.intra_op_threads}")

    def fix_threads(self, job_threads: int | None = None) -> int:
        """Set torch's intra-op threads for a job that computes stored numbers and return them:
        ``intra_op_threads`` whatever the job's cores (the reductions inside a matmul, and so the last bits of
        every number, depend on the thread count), or with 0 the job's ``job_threads`` (torch's own default when
        None): faster on many cores, but the numbers then depend on the machine."""
        import torch

        threads = self.intra_op_threads or job_threads or torch.get_num_threads()
        torch.set_num_threads(threads)
        return threads
