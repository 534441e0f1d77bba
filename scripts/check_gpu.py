"""Correctness of the CUDA instance-norm kernels on a real GPU (one command, exit code 1 on
any failure):

    python scripts/check_gpu.py            # every case of tests/test_ops.py plus GPU-sized ones

Each case draws fresh random inputs, poisons the CUDA caching allocator (blocks of the output
sizes filled with NaN bytes and freed right before each op call, so an unwritten output shows
up as NaN), runs forward and backward on CUDA and compares y, dx, dweight, dbias with the
float64 reference of tests/test_ops.py.  Prints PASS/FAIL per case and a summary.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from test_ops import CASES, Case, check_case  # noqa: E402

from stylize.ops import backend_status, build, instance_norm  # noqa: E402

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16

# Shapes that reach every kernel path: resident planes (<= 16384 values, enough planes),
# cluster planes (sm_90: up to 131072 values, or too few planes to fill the GPU), split planes
# (larger), unaligned (odd H*W, offset pointers: scalar loads), NHWC with channel tiles
# full/partial, C == 1 and H*W == 1.
GPU_CASES = [
    Case((130, 8, 64, 64), F32, weight="NC", bias="C", relu=True),
    Case((4, 64, 128, 128), F32, weight="C", bias="C", relu=True),
    Case((4, 64, 128, 128), BF16, weight="NC", bias="NC"),
    Case((1, 4, 96, 96), F32, weight="C", bias="none", relu=True),
    Case((1, 4, 96, 96), F16, weight="none", bias="NC"),
    Case((2, 3, 256, 256), F32, weight="NC", bias="NC", relu=True),
    Case((2, 3, 256, 256), BF16, weight="C", bias="C", relu=True),
    Case((1, 2, 1024, 1024), BF16, weight="NC", bias="C", relu=True),
    Case((1, 2, 1024, 1024), F32, weight="C", bias="NC"),
    Case((1, 3, 300, 301), F32, weight="NC", bias="C", relu=True),
    Case((1, 3, 300, 301), F16, weight="C", bias="C"),
    Case((2, 3, 64, 64), F32, offset=True, relu=True),
    Case((1, 2, 256, 256), F32, offset=True, weight="NC"),
    Case((1, 2, 256, 256), F32, mean_shift=100.0, relu=True),
    Case((2, 40, 33, 17), F32, channels_last=True, weight="NC", bias="C", relu=True),
    Case((2, 64, 128, 128), BF16, channels_last=True, weight="C", bias="C", relu=True),
    Case((2, 64, 128, 128), F32, channels_last=True, weight="NC", bias="NC"),
    Case((1, 32, 512, 512), F16, channels_last=True, weight="C", bias="NC", relu=True),
    Case((1, 3, 50, 50), F32, channels_last=True, relu=True),
    Case((1, 1, 20, 20), F32, channels_last=True, weight="NC"),
    Case((3, 32, 1, 1), BF16, channels_last=True, weight="C", bias="NC", relu=True),
    Case((16, 128, 32, 32), BF16, weight="C", bias="C", relu=True),
]


def poison(x: torch.Tensor) -> None:
    """Fill freed allocator blocks of the sizes the op will allocate with NaN bytes."""
    nbytes = x.numel() * x.element_size()
    stats = x.shape[0] * x.shape[1] * 4
    sizes = [nbytes, nbytes, stats, stats, stats * 64, 4 << 20]
    blocks = [torch.empty(s, dtype=torch.uint8, device=x.device).fill_(0xFF) for s in sizes if s]
    del blocks


def zero_size_cases(device: str) -> list[str]:
    failures = []
    for shape in [(0, 3, 4, 4), (2, 0, 4, 4)]:
        x = torch.randn(shape, device=device, requires_grad=True)
        w = torch.ones(shape[1], device=device, requires_grad=True)
        y = instance_norm(x, w, None, activation="relu")
        y.sum().backward()
        if y.shape != shape or x.grad.shape != shape or w.grad.shape != (shape[1],):
            failures.append(f"zero-size {shape}: wrong shapes")
    return failures


def opcheck_cases(device: str) -> list[str]:
    """torch.library.opcheck of both ops on `device` (schema, fake kernels vs real outputs,
    autograd registration, AOT dispatch)."""
    failures = []
    for shape, dtype, cl in [((2, 3, 5, 6), F32, False), ((2, 8, 40, 40), BF16, True),
                             ((1, 4, 160, 160), F16, False)]:
        x = torch.randn(shape, device=device).to(dtype)
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        n, c = shape[:2]
        w = torch.rand(c, device=device, requires_grad=True)
        b = torch.randn(n, c, device=device, requires_grad=True)
        try:
            fwd = torch.ops.stylize.instance_norm_fwd.default
            torch.library.opcheck(fwd, (x.clone().requires_grad_(), w, b, 1e-5, True))
            y, mean, rstd = fwd(x, w, b, 1e-5, True)
            torch.library.opcheck(torch.ops.stylize.instance_norm_bwd.default,
                                  (torch.randn_like(y), x, mean, rstd, w.detach(), b.detach(),
                                   True))
        except Exception as exc:
            failures.append(f"opcheck {shape} {dtype}: {type(exc).__name__}: {exc}")
    return failures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="CUDA correctness check of the instance-norm op")
    ap.add_argument("--allow-fallback", action="store_true",
                    help="check even when the CUDA extension is unavailable (PyTorch path)")
    ap.add_argument("-k", default="", help="only cases whose name contains this")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                    help="cpu: self-test of this script on the PyTorch path")
    args = ap.parse_args(argv)
    dev = args.device
    if dev == "cuda" and not torch.cuda.is_available():
        print("FAIL: no CUDA device")
        return 1
    ext = build.get_extension() if dev == "cuda" else None
    name = torch.cuda.get_device_name() if dev == "cuda" else "cpu"
    print(f"device: {name}  backend: {backend_status()['cuda' if dev == 'cuda' else 'cpu']}")
    if dev == "cuda" and ext is None and not args.allow_fallback:
        print(f"FAIL: CUDA extension unavailable ({build.extension_reason()})")
        return 1

    failed = 0
    total = 0
    start = time.perf_counter()
    side_stream = torch.cuda.Stream() if dev == "cuda" else None
    # GPU-sized cases run twice: as planned, and with STYLIZE_NO_CLUSTER=1 so that planes the
    # sm_90 cluster path would take go through the split path too.
    runs = [(c, False) for c in CASES + GPU_CASES] + [(c, True) for c in GPU_CASES]
    for i, (case, no_cluster) in enumerate(runs):
        name = case.name + ("[no-cluster]" if no_cluster else "")
        if args.k not in name:
            continue
        total += 1
        if no_cluster:
            os.environ["STYLIZE_NO_CLUSTER"] = "1"
        else:
            os.environ.pop("STYLIZE_NO_CLUSTER", None)
        try:
            if side_stream is not None and i % 7 == 3:  # some cases on a side stream
                with torch.cuda.stream(side_stream):
                    fails = check_case(case, "cuda", seed=1000 + i, before_call=poison)
                torch.cuda.synchronize()
            else:
                fails = check_case(case, dev, seed=1000 + i, before_call=poison)
        except Exception as exc:  # a crash is a failure of this case, keep going
            fails = [f"{type(exc).__name__}: {exc}"]
        print(f"{'PASS' if not fails else 'FAIL'} {name}" + (
            "" if not fails else "\n    " + "\n    ".join(fails)), flush=True)
        failed += bool(fails)
    os.environ.pop("STYLIZE_NO_CLUSTER", None)
    if not args.k:
        for name, fn in (("zero-size", zero_size_cases), ("opcheck", opcheck_cases)):
            total += 1
            fails = fn(dev)
            print(f"{'PASS' if not fails else 'FAIL'} {name}" + "".join(
                f"\n    {f}" for f in fails))
            failed += bool(fails)
    print(f"\n{total - failed}/{total} passed in {time.perf_counter() - start:.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
