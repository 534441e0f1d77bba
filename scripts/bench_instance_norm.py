"""Benchmark stylize's instance-norm operator against torch's own path.

    python scripts/bench_instance_norm.py --device cuda          # H100/H200: the targets
    python scripts/bench_instance_norm.py --device cpu --threads 1

For each shape, dtype (fp32, bf16), layout (contiguous, channels_last) and parameter form it
times (median of --reps runs, after warm-up) the forward and forward+backward of
- ours:  stylize.ops.instance_norm(x, w, b, activation="relu")
- torch: F.instance_norm(x) followed by a separate affine (y * w + b) and ReLU  (params (C,)),
         F.batch_norm on the (1, N*C, H, W) view, then ReLU                   (params (N, C)),
and prints a markdown table with the speedup and the bandwidth achieved relative to the minimum
traffic (forward: read x, write y; backward: read x and dy, write dx; fwd+bwd: both).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import datetime, timezone

import torch
import torch.nn.functional as F

from stylize.ops import backend_status, instance_norm

SHAPES = [(8, 64, 256, 256), (4, 128, 64, 64), (4, 32, 512, 512), (1, 32, 1024, 1024),
          (16, 128, 32, 32)]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PEAK_GBS = {"H100": 3350.0, "H200": 4800.0}  # HBM bandwidth of the SXM parts, GB/s


def torch_shared(x, w, b):
    """F.instance_norm, then a separate affine and ReLU (torch's path for (C,) params)."""
    y = F.instance_norm(x, eps=1e-5)
    return F.relu(y * w[:, None, None] + b[:, None, None])


def torch_per_sample(x, w, b):
    """F.batch_norm over the (1, N*C, H, W) view (torch's path for (N, C) params)."""
    n, c, h, wd = x.shape
    y = F.batch_norm(x.reshape(1, n * c, h, wd), None, None, w.reshape(-1), b.reshape(-1),
                     training=True, eps=1e-5)
    return F.relu(y.reshape(n, c, h, wd))


def ours(x, w, b):
    return instance_norm(x, w, b, 1e-5, "relu")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn, device: torch.device, reps: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def run_case(impl, x, w, b, dy, mode: str, device, reps: int, warmup: int) -> float:
    if mode == "fwd":
        def step():
            with torch.inference_mode():
                impl(x, w, b)
    else:
        xg, wg, bg = (t.detach().requires_grad_() for t in (x, w, b))

        def step():
            impl(xg, wg, bg).backward(dy)
            xg.grad = wg.grad = bg.grad = None
    return median_ms(step, device, reps, warmup)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--layouts", default="contiguous,channels_last")
    ap.add_argument("--params", default="shared,per-sample", help="shared: (C,), per-sample: (N,C)")
    ap.add_argument("--modes", default="fwd,fwd+bwd")
    ap.add_argument("--shapes", default=None, help="e.g. 8x64x256x256,4x128x64x64")
    ap.add_argument("--reps", type=int, default=None, help="timed runs (median reported)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--peak-gbs", type=float, default=None, help="memory bandwidth for % column")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run with --device cpu", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = SHAPES if not args.shapes else [
        tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    reps = args.reps or (30 if device.type == "cuda" else 5)
    warmup = 5 if device.type == "cuda" else 1
    peak = args.peak_gbs
    name = "cpu"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = peak or next((v for k, v in PEAK_GBS.items() if k in name), None)
    else:
        import platform

        name = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    status = backend_status()
    print(f"# instance_norm benchmark: {name}, torch {torch.__version__}, "
          f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"# backend: {status['cuda'] if device.type == 'cuda' else status['cpu']}")
    print(f"# median of {reps} runs; speedup = torch / ours; GB/s = minimum traffic / time\n")
    pct = " | % peak" if peak else ""
    print(f"| shape | dtype | layout | params | pass | ours ms | torch ms | speedup | GB/s{pct} |")
    print("|---|---|---|---|---|---:|---:|---:|---:|" + ("---:|" if peak else ""))
    gen = torch.Generator(device="cpu").manual_seed(0)
    for shape in shapes:
        for dname in args.dtypes.split(","):
            dtype = DTYPES[dname]
            for layout in args.layouts.split(","):
                fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
                x = torch.randn(shape, generator=gen).to(device, dtype).contiguous(
                    memory_format=fmt)
                dy = torch.randn(shape, generator=gen).to(device, dtype).contiguous(
                    memory_format=fmt)
                n, c = shape[:2]
                for pname in args.params.split(","):
                    pshape = (c,) if pname == "shared" else (n, c)
                    w = (torch.rand(pshape, generator=gen) + 0.5).to(device, dtype)
                    b = torch.randn(pshape, generator=gen).to(device, dtype)
                    baseline = torch_shared if pname == "shared" else torch_per_sample
                    for mode in args.modes.split(","):
                        t_ours = run_case(ours, x, w, b, dy, mode, device, reps, warmup)
                        t_torch = run_case(baseline, x, w, b, dy, mode, device, reps, warmup)
                        units = 2 if mode == "fwd" else 5
                        gbs = units * x.numel() * x.element_size() / (t_ours * 1e-3) / 1e9
                        extra = f" | {100 * gbs / peak:.0f}%" if peak else ""
                        print(f"| {'x'.join(map(str, shape))} | {dname} | {layout} | {pname} | "
                              f"{mode} | {t_ours:.3f} | {t_torch:.3f} | "
                              f"{t_torch / t_ours:.2f}x | {gbs:.0f}{extra} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
