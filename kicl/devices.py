"""The torch device and dtype of a job, resolved once from the config, the model catalog and this machine
(no torch import unless the CPU's bfloat16 support must be asked)."""

from __future__ import annotations

from kicl.config import schema_enum

#: the explicit torch dtypes (capture.dtype without auto)
DTYPE_NAMES = tuple(name for name in schema_enum("capture", "dtype") if name != "auto")


def resolve_device(requested: str | None, model_device: str | None = None, *, fallback: str = "cpu") -> str:
    """The torch device of a job: ``requested`` unless ``auto``; then the model's catalog device unless that
    is ``auto`` or missing too; then ``fallback`` (the capture passes ``cuda`` when CUDA is available, the
    Snakefile's resource estimates ``cpu``)."""
    for candidate in (requested, model_device):
        if candidate and candidate != "auto":
            return str(candidate)
    return fallback


#: what :func:`resolve_dtype` returns for ``auto`` when bfloat16 may replace float32 on this CPU: the capture
#: then measures the agreement of the two on the first prompts (kicl.capture.dtype_check) and picks one
AUTO_BF16 = "auto-bfloat16"
#: /proc/cpuinfo flags of CPUs that run bfloat16 matrix products natively (AVX512-BF16, AMX)
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True when the CPU has native bfloat16 matrix instructions (a flag of NATIVE_BF16_FLAGS in ``cpuinfo``)
    and torch's CPU kernels use AVX512 or better (``torch.backends.cpu.get_cpu_capability()``)."""
    try:
        with open(cpuinfo) as handle:
            flags = {word for line in handle if line.startswith("flags") for word in line.split(":", 1)[1].split()}
    except OSError:
        return False
    if not flags.intersection(NATIVE_BF16_FLAGS):
        return False
    import torch

    return torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def resolve_dtype(
    requested: str | None, model_dtype: str | None = None, device: str | None = None, native_bf16: bool | None = None
) -> str:
    """The torch dtype name of a job: ``requested`` unless ``auto``; then the model's dtype if it is one of
    float32/float16/bfloat16, else float32.

    With ``device`` given (the capture): an ``auto`` that ends at float32 on a CPU with native bfloat16
    (``native_bf16``, detected by :func:`cpu_has_native_bf16` when None) gives :data:`AUTO_BF16`, which the
    capture settles by a measured agreement check. Without ``device`` (the Slurm resource estimates) it stays
    float32, the larger and slower of the two, so the estimate holds either way.
    """
    if requested and requested != "auto":
        return str(requested)
    dtype = model_dtype if model_dtype in DTYPE_NAMES else "float32"
    on_cpu = device is not None and str(device).split(":")[0] == "cpu"
    if dtype == "float32" and on_cpu and (native_bf16 if native_bf16 is not None else cpu_has_native_bf16()):
        return AUTO_BF16
    return dtype
