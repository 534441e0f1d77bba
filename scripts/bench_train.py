"""Benchmark one training step of `stylize train`: a plain baseline against ours, same run.

    python scripts/bench_train.py [--device auto|cpu|cuda] [--image-size 256] [--batch-size 4]
                                  [--steps 10] [--repeats 5] [--markdown FILE]

Variants (johnson preset, VGG16 perceptual loss with relu1_2..relu4_3, Adam; random weights and
random uint8 photos already in memory, so data loading is not measured):

  (a) baseline   float32, contiguous, eager, torch.nn.InstanceNorm2d (+ nn.ReLU) swapped in for
                 stylize's norm layers: a textbook PyTorch implementation.
  (b) ours       stylize's instance-norm operator, mixed precision where the device supports it
                 (bf16 on CUDA with bf16, fp16 + GradScaler on older GPUs, float32 on the CPU),
                 channels_last, and torch.compile of the whole step (network + loss) -- each
                 measured separately so the table shows what helps; "ours" is the best of them.

All variants are built and warmed up first (compilation happens there), then timed in
interleaved rounds (a, b1, b2, ..., a, b1, b2, ...: a change in machine load hits them alike);
the table shows the median steps/s over `repeats` rounds of `steps` steps, images/s, peak
memory (CUDA: max allocated during the variant's steps, the other variants' weights being
resident too; CPU: peak RSS of a fresh process running the variant alone), and "vs (a)": the
median over rounds of the ratio to (a) measured in the same round.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# name -> (norm, precision, channels_last, compile); precision "auto" = bf16/fp16 on CUDA,
# float32 on the CPU (stylize.device.resolve_precision).
VARIANTS = {
    "a_baseline": ("torch", "fp32", False, False),
    "b_eager": ("ours", "auto", False, False),
    "b_eager_cl": ("ours", "auto", True, False),
    "b_compiled": ("ours", "auto", False, True),
    "b_compiled_cl": ("ours", "auto", True, True),
}


def swap_in_torch_norms(net):
    """Replace stylize's InstanceNorm2d layers by torch.nn.InstanceNorm2d (+ ReLU), same params."""
    import torch
    from torch import nn

    from stylize.nn.norm import InstanceNorm2d

    class TorchNorm(nn.Module):
        def __init__(self, ours: InstanceNorm2d):
            super().__init__()
            c = ours.weight.numel()
            self.norm = nn.InstanceNorm2d(c, eps=ours.eps, affine=True)
            with torch.no_grad():
                self.norm.weight.copy_(ours.weight)
                self.norm.bias.copy_(ours.bias)
            self.relu = nn.ReLU() if ours.activation == "relu" else nn.Identity()

        def forward(self, x):
            return self.relu(self.norm(x))

    count = 0
    for module in list(net.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, InstanceNorm2d):
                setattr(module, name, TorchNorm(child))
                count += 1
    assert count > 0, "no norm layers swapped"
    return net


def build_variant(name: str, args):
    """A ready-to-call training step for one variant, plus its device."""
    import torch

    from stylize.device import resolve_device, resolve_precision
    from stylize.nn.transformer import TransformerNet, preset
    from stylize.nn.vgg import VGGFeatures, load_vgg
    from stylize.train.losses import PerceptualLoss
    from stylize.train.trainer import StepRunner, TrainModule

    norm, precision, channels_last, compile_ = VARIANTS[name]
    device = resolve_device(args.device)
    dtype = resolve_precision(precision, device)
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    net = TransformerNet(preset("johnson"))
    if norm == "torch":
        swap_in_torch_norms(net)
    vgg = load_vgg(args.vgg_weights) if args.vgg_weights else VGGFeatures()
    g = torch.Generator().manual_seed(1)
    style = torch.rand(1, 3, args.image_size, args.image_size, generator=g)
    loss = PerceptualLoss(vgg, [style])
    module = TrainModule(net, loss, 1, False).to(device)
    if channels_last:
        module.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    step_module = torch.compile(module) if compile_ else module
    runner = StepRunner(step_module, optimizer, device, dtype, channels_last, scaler)
    shape = (args.batch_size, 3, args.image_size, args.image_size)
    images = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
    if device.type == "cuda":
        images = images.pin_memory()
    index = torch.zeros(args.batch_size, dtype=torch.long)
    info = {
        "variant": name,
        "norm": "torch.nn.InstanceNorm2d" if norm == "torch" else "stylize op",
        "precision": str(dtype).replace("torch.", ""),
        "channels_last": channels_last,
        "compile": compile_,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "",
    }
    return (lambda: runner(images, index)), device, info


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step, device, steps: int) -> float:
    """Steps per second over `steps` steps (synchronized)."""
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        terms = step()
    _sync(device)
    rate = steps / (time.perf_counter() - t0)
    value = float(terms["total"])
    if value != value or abs(value) == float("inf"):
        raise RuntimeError("non-finite loss")
    return rate


def measure_all(names: list[str], args) -> list[dict]:
    """Build + warm up every variant, then time them in interleaved rounds (a b c a b c ...),
    so that a change in machine load affects all variants alike."""
    import torch

    built = []
    for name in names:
        print(f"building + warming up {name} ...", file=sys.stderr, flush=True)
        step, device, info = build_variant(name, args)
        t0 = time.perf_counter()
        for _ in range(args.warmup):
            step()
        _sync(device)
        info["warmup_s"] = time.perf_counter() - t0
        info["rates"] = []
        built.append((step, device, info))
    for r in range(args.repeats):
        for step, device, info in built:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            info["rates"].append(time_steps(step, device, args.steps))
            if device.type == "cuda":
                peak = torch.cuda.max_memory_allocated(device) / 2**20
                info["peak_memory_mb"] = max(info.get("peak_memory_mb", 0.0), peak)
        print(f"round {r + 1}/{args.repeats}: "
              + ", ".join(f"{i['variant']} {i['rates'][-1]:.3f}" for _, _, i in built),
              file=sys.stderr, flush=True)  # fmt: skip
    out = []
    for _, _, info in built:
        info["steps_per_s"] = statistics.median(info["rates"])
        info["images_per_s"] = info["steps_per_s"] * args.batch_size
        out.append(info)
    return out


def peak_rss_mb() -> float:
    """This process's peak resident memory.  VmHWM, not getrusage: on Linux ru_maxrss survives
    fork + exec, so a child would report its parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_peak_rss(name: str, args) -> float:
    """CPU peak memory of one variant: a fresh process running its warm-up + 1 step."""
    cmd = [sys.executable, __file__, "--variant", name]
    for key in ("device", "batch_size", "image_size", "warmup"):
        cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    if args.vgg_weights:
        cmd += ["--vgg-weights", args.vgg_weights]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stderr[-2000:], file=sys.stderr)
        return float("nan")
    return float(proc.stdout.strip().splitlines()[-1])


def machine(device_name: str) -> str:
    import torch

    from stylize.device import cpu_name

    cpu = cpu_name()
    what = device_name or f"CPU {cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"
    return f"{what}; torch {torch.__version__}, Python {platform.python_version()}"


def table(results: list[dict], args) -> str:
    """Markdown table; "vs (a)" is the median over rounds of the ratio to (a) in the same round
    (robust when the machine's load drifts during the run)."""
    base = next((r for r in results if r["variant"] == "a_baseline"), None)
    ok_base = base is not None and "error" not in base
    lines = [
        "| variant | norm | precision | channels_last | compile | steps/s (median) "
        "| best | images/s | peak memory | vs (a) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['variant']} | failed: {r['error']} | | | | | | | | |")
            continue
        ratio = ""
        if ok_base:
            pairs = zip(r["rates"], base["rates"], strict=True)
            r["ratio"] = statistics.median(x / b for x, b in pairs)
            ratio = f"{r['ratio']:.2f}x"
        lines.append(
            f"| {r['variant']} | {r['norm']} | {r['precision']} | {r['channels_last']} "
            f"| {r['compile']} | {r['steps_per_s']:.3f} | {max(r['rates']):.3f} "
            f"| {r['images_per_s']:.2f} | {r['peak_memory_mb']:.0f} MiB | {ratio} |"
        )
    good = [r for r in results if "ratio" in r and r["variant"].startswith("b_")]
    if good:
        best = max(good, key=lambda r: r["ratio"])
        lines.append("")
        lines.append(
            f"ours (best (b): {best['variant']}) vs the baseline (a): {best['ratio']:.2f}x steps/s"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps (compiles)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated")
    parser.add_argument("--vgg-weights", default=None, help="real weights (optional)")
    parser.add_argument("--markdown", default=None, help="also write the table here")
    parser.add_argument("--json", default=None, help="also write raw results here")
    parser.add_argument("--variant", default=None, help=argparse.SUPPRESS)  # child process
    args = parser.parse_args()

    if args.variant:  # child: peak RSS (MiB) of one variant on the CPU, on the last line
        step, device, _ = build_variant(args.variant, args)
        for _ in range(args.warmup + 1):
            step()
        print(peak_rss_mb())
        return

    names = args.variants.split(",")
    results = measure_all(names, args)
    for info in results:
        if "peak_memory_mb" not in info:  # CPU: measured per variant in a fresh process
            print(f"peak memory of {info['variant']} ...", file=sys.stderr, flush=True)
            info["peak_memory_mb"] = child_peak_rss(info["variant"], args)

    device_name = next((r.get("device_name", "") for r in results if "error" not in r), "")
    header = (
        f"Training step, johnson preset, batch {args.batch_size}, "
        f"{args.image_size}x{args.image_size}, median of {args.repeats} x {args.steps} steps "
        f"({datetime.date.today().isoformat()}; {machine(device_name)})"
    )
    text = header + "\n\n" + table(results, args)
    print(text)
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(text + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
