"""Benchmark `stylize apply`: network latency vs onnxruntime, end-to-end images/s (CPU, GPU).

    python scripts/bench_apply.py                      # CPU tables (+ GPU where CUDA exists)
    python scripts/bench_apply.py --md benchmarks/apply_cpu.md
    python scripts/bench_apply.py --gpu-only           # the GPU part alone (one command)

Tables (medians of --runs repetitions; ratios are measured in the same run):

1. CPU network latency of the bundled model at 256, 512 and 1024 px: stylize's CPU path as
   `Stylizer` runs it (eager), the same network in channels-last layout and under
   torch.compile (with its one-off compile time), against onnxruntime on
   ../shared/models/multistyle26.onnx with the same input and style.
2. CPU end to end: `Stylizer.stylize_files` on a folder of 50 JPEG photos (~1024 px, made from
   assets/photos), images/s including decode, network, encode and writing.
3. GPU (only with CUDA): end to end on 500 JPEGs of 1024x1024 with the `johnson` preset
   (random weights), and network-only images/s at the same batch size.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stylize.batch import ApplyOptions  # noqa: E402
from stylize.cpu_memory import keep_freed_memory  # noqa: E402
from stylize.device import cpu_name  # noqa: E402
from stylize.stylizer import Stylizer  # noqa: E402

ONNX = ROOT.parent / "shared" / "models" / "multistyle26.onnx"
STYLE = 3


def timed(fn, runs: int, warmup: int = 1) -> float:
    """Median wall time of fn() over `runs` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def machine() -> str:
    cpu = cpu_name()
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return (
        f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), load average at start {load}"
    )


# -- 1. CPU latency ------------------------------------------------------------------------


def _ms(t: float | None) -> str:
    return "n/a" if t is None else f"{t * 1e3:.0f} ms"


def _ratio(t: float | None, ref: float | None) -> str:
    return "n/a" if t is None or ref is None else f"{t / ref:.2f}x"


def cpu_latency(sizes: list[int], runs: int, compile_too: bool) -> list[str]:
    """Network latency: stylize's variants against onnxruntime on identical inputs."""
    import copy

    import numpy as np

    st = Stylizer(device="cpu")  # the default: fp32, channels-last, eager
    st_bf16 = Stylizer(device="cpu", precision="bf16")
    w = st.style_vector(STYLE)[None]  # (1, S)
    net_nchw = copy.deepcopy(st.net).to(memory_format=torch.contiguous_format)
    compiled = torch.compile(copy.deepcopy(st.net), dynamic=False) if compile_too else None
    sess = None
    try:
        import onnxruntime as ort

        if ONNX.exists():
            so = ort.SessionOptions()
            so.intra_op_num_threads = torch.get_num_threads()  # the same threads as torch
            sess = ort.InferenceSession(str(ONNX), so, providers=["CPUExecutionProvider"])
    except ImportError:
        pass
    rows = [
        "| size | onnxruntime fp32 | **stylize fp32 (default)** | ratio | NCHW fp32 | ratio "
        "| torch.compile fp32 | ratio | compile time | stylize bf16 | ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in sizes:
        torch.manual_seed(s)
        x = torch.rand(1, 3, s, s)  # (1, 3, S, S) in [0, 1], NCHW like onnxruntime's input
        ort_t = None
        if sess is not None:
            feed = {"image": x.numpy(), "style_weights": w[0].numpy().astype(np.float32)}
            ort_t = timed(lambda feed=feed: sess.run(None, feed), runs)
        with torch.inference_mode():
            # run_network is what Stylizer does per batch (channels-last conversion included).
            ours = timed(lambda x=x: st.run_network(x, w), runs)
            nchw = timed(lambda x=x: net_nchw(x, w), runs)
            xb = x.to(torch.bfloat16)
            wb = w.to(torch.bfloat16)
            bf16 = timed(lambda xb=xb, wb=wb: st_bf16.run_network(xb, wb), runs)
            comp = ctime = None
            if compiled is not None:
                xc = x.contiguous(memory_format=torch.channels_last)
                t0 = time.perf_counter()
                compiled(xc, w)
                ctime = time.perf_counter() - t0
                comp = timed(lambda xc=xc, f=compiled: f(xc, w), runs)
        rows.append(
            f"| {s}x{s} | {_ms(ort_t)} | **{_ms(ours)}** | **{_ratio(ours, ort_t)}** "
            f"| {_ms(nchw)} | {_ratio(nchw, ort_t)} | {_ms(comp)} | {_ratio(comp, ort_t)} "
            f"| {'n/a' if ctime is None else f'{ctime:.1f} s'} | {_ms(bf16)} "
            f"| {_ratio(bf16, ort_t)} |"
        )
        print(rows[-1], flush=True)
    return rows


# -- 2./3. end to end ---------------------------------------------------------------------


def make_photos(folder: Path, count: int, size: tuple[int, int] | None) -> None:
    """count JPEGs from assets/photos: ~1024 px crops/resizes (size: exact WxH instead)."""
    from PIL import Image

    sources = sorted((ROOT / "assets" / "photos").glob("*.jpg"))
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        with Image.open(sources[i % len(sources)]) as im:
            im = im.convert("RGB")
            if size is None:
                scale = 1024 / max(im.size)
                target = (round(im.width * scale), round(im.height * scale))
            else:
                target = size
            im = im.resize(target, Image.Resampling.BICUBIC)
            if i % 2:
                im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            im.save(folder / f"photo_{i:04d}.jpg", quality=90)


def end_to_end(st: Stylizer, folder: Path, runs: int, batch_size: int, style) -> float:
    """Median images/s of stylize_files(folder) into a fresh output folder per run."""
    n = len(list(folder.glob("*.jpg")))
    times = []
    for r in range(runs):
        out = folder.parent / f"out{r}"
        opts = ApplyOptions(output=str(out), style=style, batch_size=batch_size, overwrite=True)
        t0 = time.perf_counter()
        report = st.stylize_files([folder], opts)
        times.append(time.perf_counter() - t0)
        assert report.count("done") == n, report.to_dict()["counts"]
    return n / statistics.median(times)


def cpu_end_to_end(count: int, runs: int) -> list[str]:
    rows = ["| workload | images/s | s/image |", "|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        make_photos(folder, count, None)
        first = sorted(folder.glob("*.jpg"))[0]
        for precision in ("fp32", "bf16"):
            st = Stylizer(device="cpu", precision=precision)
            st.stylize(first, style=STYLE)  # warm-up (oneDNN kernels for this size)
            rate = end_to_end(st, folder, runs, 4, STYLE)
            rows.append(
                f"| {count} JPEGs ~1024 px (1024x683 / 1024x1024), magenta26 style {STYLE}, "
                f"{precision}, batch 4 | {rate:.2f} | {1 / rate:.2f} |"
            )
            print(rows[-1], flush=True)
    return rows


def gpu(count: int, runs: int, batch_size: int, device: str = "cuda") -> list[str]:
    """GPU tables (device="cpu" only to smoke-test this function on a machine without CUDA)."""
    from stylize.checkpoint import save_model
    from stylize.nn.transformer import TransformerNet, preset

    rows = [
        f"GPU: {torch.cuda.get_device_name(0) if device == 'cuda' else device}",
        "",
        "| workload | precision | images/s |",
        "|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "johnson.pt"
        torch.manual_seed(0)
        save_model(model, TransformerNet(preset("johnson")).eval())
        folder = Path(tmp) / "photos"
        make_photos(folder, count, (1024, 1024))
        st = Stylizer(str(model), device=device, compile="on")
        st.maybe_compile(count)
        x = torch.rand(batch_size, 3, 1024, 1024, device=device).to(st.dtype)
        x = x.contiguous(memory_format=st.memory_format)
        with torch.inference_mode():

            def step():
                st.run_network(x, None)
                if device == "cuda":
                    torch.cuda.synchronize()

            t = timed(step, max(runs, 10), warmup=3)
        rows.append(f"| network only, batch {batch_size}, 1024x1024 | {st.precision} | "
                    f"{batch_size / t:.1f} |")
        rate = end_to_end(st, folder, 1, batch_size, None)  # warm-up (compile, caches)
        rate = end_to_end(st, folder, runs, batch_size, None)
        rows.append(f"| end to end, {count} JPEGs 1024x1024, batch {batch_size} | "
                    f"{st.precision} | {rate:.1f} |")
    print("\n".join(rows), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="repetitions per latency (median)")
    ap.add_argument("--e2e-runs", type=int, default=3, help="repetitions of end-to-end runs")
    ap.add_argument("--sizes", default="256,512,1024")
    ap.add_argument("--photos", type=int, default=50, help="CPU end-to-end folder size")
    ap.add_argument("--gpu-photos", type=int, default=500)
    ap.add_argument("--gpu-batch", type=int, default=16)
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile column")
    ap.add_argument("--gpu-only", action="store_true")
    ap.add_argument("--no-e2e", action="store_true", help="skip the CPU end-to-end table")
    ap.add_argument("--md", type=Path, help="also write the tables to this Markdown file")
    ap.add_argument("--threads", type=int, help="intra-op threads for torch and onnxruntime")
    ap.add_argument(
        "--default-allocator",
        action="store_true",
        help="leave glibc's allocator as it is (stylize apply tunes it for CPU work)",
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tuned = not args.default_allocator and keep_freed_memory()

    lines = [
        f"# stylize apply benchmark ({datetime.date.today().isoformat()})",
        "",
        f"Machine: {machine()}",
        "",
        "Allocator: "
        + ("glibc tuned to keep freed memory, as `stylize apply` does on the CPU" if tuned
           else "default"),
        "",
    ]
    print(lines[2], flush=True)
    if not args.gpu_only:
        sizes = [int(s) for s in args.sizes.split(",")]
        lines += [f"## CPU network latency (median of {args.runs} runs)", ""]
        lines += cpu_latency(sizes, args.runs, not args.no_compile)
        if not args.no_e2e:
            lines += ["", "## CPU end to end", ""]
            lines += cpu_end_to_end(args.photos, args.e2e_runs)
    if torch.cuda.is_available():
        lines += ["", "## GPU", ""]
        lines += gpu(args.gpu_photos, args.e2e_runs, args.gpu_batch)
    elif args.gpu_only:
        sys.exit("no CUDA device: the GPU benchmark needs one")
    if args.md:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text("\n".join(lines) + "\n")
        print(f"wrote {args.md}")


if __name__ == "__main__":
    main()
