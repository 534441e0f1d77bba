"""`stylize apply`: stylize image files, folders (recursively) and glob patterns, or stdin.

A thin layer over `stylize.stylizer.Stylizer.stylize_files`: options -> `ApplyOptions`,
progress bar and summary on stderr, `--json` summary (schema "stylize.apply/1") on stdout.
Exit code 0 when every file was stylized or skipped, 1 when any failed.
"""

from __future__ import annotations

import json
import sys

import typer

from stylize.cli._common import err_console, friendly_errors, print_error, print_warning
from stylize.errors import StylizeError

_SKIPPED_SHOWN = 5


@friendly_errors
def apply(
    inputs: list[str] = typer.Argument(
        ...,
        metavar="INPUT...",
        help="Image files, folders (recursive; outputs mirror sub-folders), glob patterns "
        "('photos/**/*.jpg'), or - for stdin.",
        show_default=False,
    ),
    output: str | None = typer.Option(
        None,
        "-o",
        "--output",
        help="Output file (one input file) or folder. Default: next to each input with "
        "--suffix (folder 'photos' -> 'photos_stylized/'); for - : stdout.",
    ),
    model: str | None = typer.Option(
        None, "-m", "--model", help="Bundled model name or model file (default: magenta26)."
    ),
    style: str | None = typer.Option(
        None,
        "-s",
        "--style",
        help="Style of a multi-style model: index (3), name (starry_night), or a blend "
        "(3:0.5,12:0.5). Default: style 0.",
    ),
    strength: float = typer.Option(
        1.0, "--strength", min=0.0, max=1.0, help="0 keeps the photo, 1 is fully stylized."
    ),
    preserve_color: bool = typer.Option(
        False,
        "--preserve-color",
        help="Keep the photo's colours; take only the luminance from the stylized image.",
    ),
    fmt: str | None = typer.Option(
        None,
        "-f",
        "--format",
        help="Output format: png, jpg, webp or tiff. Default: the input's (png for others).",
    ),
    quality: int | None = typer.Option(
        None, "--quality", min=1, max=100, help="JPEG/WebP quality (default: 92 / 90)."
    ),
    max_size: int | None = typer.Option(
        None, "--max-size", min=1, help="Downscale so the longest side is at most N pixels."
    ),
    max_pixels: int = typer.Option(
        178_956_970,
        "--max-pixels",
        min=0,
        help="Refuse images with more pixels (decompression-bomb guard); 0 lifts the limit.",
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    precision: str = typer.Option(
        "auto", "--precision", help="auto (fp32 on CPU, bf16/fp16 on GPU), fp32, fp16, bf16."
    ),
    batch_size: int = typer.Option(
        4, "--batch-size", min=1, help="Images of the same size per network call."
    ),
    tile_size: int | None = typer.Option(
        None,
        "--tile-size",
        min=64,
        help="Largest side run in one piece; larger images go in overlapping tiles "
        "(default: from device memory; 3072 on CPU).",
    ),
    compile_mode: str = typer.Option(
        "auto",
        "--compile",
        help="torch.compile the network: auto (for 8+ images), on, off.",
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace existing outputs (inputs are never replaced)."
    ),
    suffix: str = typer.Option(
        "_stylized", "--suffix", help="Added to output names written next to their input."
    ),
    as_json: bool = typer.Option(
        False, "--json", help="Print a machine-readable summary on stdout (schema stylize.apply/1)."
    ),
    quiet: bool = typer.Option(
        False, "-q", "--quiet", help="No progress bar or summary (failures are still printed)."
    ),
) -> None:
    """Stylize photos: single files, whole folder trees, glob patterns or stdin."""
    from stylize.batch import ApplyOptions, plan_jobs, run_jobs
    from stylize.stylizer import Stylizer

    to_stdout = inputs == ["-"] and (output is None or output == "-")
    if as_json and to_stdout:
        raise StylizeError("--json needs stdout, but the image goes there; add -o FILE")
    options = ApplyOptions(
        output=None if output == "-" else output,
        style=style,
        strength=strength,
        preserve_color=preserve_color,
        format=fmt,
        quality=quality,
        max_size=max_size,
        max_pixels=max_pixels,
        overwrite=overwrite,
        suffix=suffix,
        batch_size=batch_size,
    )
    jobs, early = plan_jobs(inputs, options)
    stylizer = Stylizer(
        model, device=device, precision=precision, compile=compile_mode, tile_size=tile_size
    )
    if stylizer.device.type == "cpu":
        from stylize.cpu_memory import keep_freed_memory

        keep_freed_memory()  # reuse freed activations instead of page-faulting on new ones
    show_bar = not quiet and err_console.is_terminal and len(jobs) + len(early) > 1
    ui = _Progress(show_bar)
    try:
        report = run_jobs(stylizer, jobs, early, options, ui.on_result, ui.on_plan)
    finally:
        ui.close()
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    if not quiet:
        _summary(report, ui.skipped)
    if not report.ok:
        raise typer.Exit(1)


class _Progress:
    """A tqdm bar on stderr (terminals only) plus per-file failure lines."""

    def __init__(self, show_bar: bool):
        self.show_bar = show_bar
        self.bar = None
        self.skipped: list[str] = []

    def on_plan(self, total: int) -> None:
        if self.show_bar:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="img", file=sys.stderr, dynamic_ncols=True)

    def on_result(self, r) -> None:
        if r.status == "failed":
            self._print(lambda: print_error(f"{r.input}: {r.reason}"))
        elif r.status == "skipped":
            self.skipped.append(r.output or r.input)
        if self.bar is not None:
            self.bar.update(1)

    def _print(self, fn) -> None:
        if self.bar is None:
            fn()
            return
        from tqdm import tqdm

        with tqdm.external_write_mode(file=sys.stderr):
            fn()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _summary(report, skipped: list[str]) -> None:
    if skipped:
        shown = ", ".join(skipped[:_SKIPPED_SHOWN])
        more = f" and {len(skipped) - _SKIPPED_SHOWN} more" if len(skipped) > _SKIPPED_SHOWN else ""
        print_warning(
            f"skipped {len(skipped)} existing output(s): {shown}{more} (use --overwrite to replace)"
        )
    done, secs = report.count("done"), report.seconds
    rate = f", {done / secs:.2f} images/s" if done and secs > 0 else ""
    err_console.print(
        f"done {done}, skipped {report.count('skipped')}, failed {report.count('failed')} "
        f"in {secs:.1f} s{rate}",
        highlight=False,
        markup=False,
    )
