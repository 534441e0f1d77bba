"""The instance-normalization operator (custom torch op with CUDA kernels and a CPU fallback).

    instance_norm(x, weight=None, bias=None, eps=1e-5, activation=None) -> Tensor
    backend_status() -> {"cpu": ..., "cuda": ...}   # which implementation runs, and why
"""

from __future__ import annotations

from stylize.ops.instance_norm import instance_norm

__all__ = ["backend_status", "instance_norm"]

_CPU_PATH = (
    "PyTorch fallback (float32 statistics; sum-based stats + one fused scale/shift pass for "
    "float32 NCHW, torch's fused batch-norm kernel on the planes otherwise)"
)


def backend_status() -> dict[str, str]:
    """Which instance-norm implementation is active on each device, and why.

    With a CUDA device this builds (or loads from the cache) the extension, so the answer
    is the real one."""
    import torch

    from stylize.ops import build

    if build.extension_disabled():
        cuda = "PyTorch fallback: disabled by STYLIZE_NO_CUDA_EXT=1"
    elif not torch.cuda.is_available():
        cuda = "PyTorch fallback: no CUDA device"
    else:
        ext = build.get_extension()
        reason = build.extension_reason()
        cuda = f"CUDA kernels: {reason}" if ext is not None else f"PyTorch fallback: {reason}"
    toolkit = build.find_cuda_home()
    return {"cpu": _CPU_PATH, "cuda": cuda, "cuda_toolkit": str(toolkit or "none found")}
