"""Device and precision resolution, done once at the edge (Stylizer, trainer)."""

from __future__ import annotations

import torch

from stylize.errors import StylizeError

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda if available else cpu; 'cuda' or 'cuda:N' must exist."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise StylizeError(
                f"--device {name}: no CUDA device is available here; use --device cpu or auto"
            )
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise StylizeError(
                f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible"
            )
        return dev
    raise StylizeError(f"--device {name!r}: expected one of auto, cpu, cuda, cuda:N")


def resolve_precision(name: str, device: torch.device) -> torch.dtype:
    """'auto' -> float32 on CPU, bfloat16 (else float16) on CUDA."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if name not in _DTYPES:
        raise StylizeError(f"--precision {name!r}: expected one of {', '.join(PRECISIONS)}")
    if device.type == "cpu" and name == "fp16":
        raise StylizeError("--precision fp16 is not supported on the CPU; use fp32 or bf16")
    return _DTYPES[name]


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one), for reports."""
    import platform
    from pathlib import Path

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
