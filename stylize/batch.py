"""Files and folders for `stylize apply`: plan input -> output paths, then run a pipeline.

Planning (`plan_jobs`):
- a file -> one job; a folder -> every image below it (recursively, hidden files skipped), its
  output mirroring the sub-folders; a glob pattern -> its matches, mirrored below the pattern's
  fixed leading folder; "-" -> stdin (output to stdout unless `output` names a file).
- Output: `output` as a file (one input file, the name has an image suffix) or as a folder;
  default next to each input with `suffix` ("photo.jpg" -> "photo_stylized.jpg", folder
  "photos" -> "photos_stylized/").  An output never replaces an input; existing outputs are
  skipped unless `overwrite`; an output folder inside an input folder is not read as input.

Running (`run_jobs`): worker threads decode ahead and encode behind while the main thread runs
the network on batches of same-size images; every file ends as one `FileResult`.
"""

from __future__ import annotations

import glob
import os
import sys
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from stylize import images
from stylize.errors import StylizeError

if TYPE_CHECKING:
    import torch

    from stylize.stylizer import Stylizer

SCHEMA = "stylize.apply/1"
STDIO = "-"


@dataclass
class ApplyOptions:
    """Everything `stylize apply` passes to the library besides the inputs."""

    output: str | None = None  # file (one input) or folder; None: next to each input
    style: object = None  # index, name, "3:0.5,12:0.5" or dict (see stylize.styles)
    strength: float = 1.0  # 0: the input unchanged, 1: fully stylized
    preserve_color: bool = False  # keep the input's chroma, take the stylized luminance
    format: str | None = None  # "png" | "jpg" | "webp" | "tiff"; None: keep the input's
    quality: int | None = None  # JPEG/WebP quality 1-100; None: 92 / 90
    max_size: int | None = None  # downscale so the longest side is at most this
    max_pixels: int | None = images.DEFAULT_MAX_PIXELS  # decompression-bomb guard; 0: off
    overwrite: bool = False  # replace existing outputs (never inputs)
    suffix: str = "_stylized"  # default output name: stem + suffix
    batch_size: int = 4  # images of the same size per network call
    workers: int | None = None  # decode/encode threads per pool; None: from the CPU count
    stdin: BinaryIO | None = None  # where "-" reads from (default sys.stdin.buffer)
    stdout: BinaryIO | None = None  # where a "-" output goes (default sys.stdout.buffer)

    def validate(self) -> None:
        if not 0.0 <= self.strength <= 1.0:
            raise StylizeError(f"--strength {self.strength}: must be between 0 and 1")
        if self.format is not None:
            self.format = images.normalize_format(self.format)
        if self.quality is not None and not 1 <= self.quality <= 100:
            raise StylizeError(f"--quality {self.quality}: must be between 1 and 100")
        if self.max_size is not None and self.max_size < 1:
            raise StylizeError(f"--max-size {self.max_size}: must be a positive number of pixels")
        if self.max_pixels is not None and self.max_pixels < 0:
            raise StylizeError(f"--max-pixels {self.max_pixels}: must be >= 0 (0: no limit)")
        if self.batch_size < 1:
            raise StylizeError(f"--batch-size {self.batch_size}: must be at least 1")
        if not self.suffix or "/" in self.suffix or os.sep in self.suffix:
            raise StylizeError(f"--suffix {self.suffix!r}: must be a non-empty file-name part")


@dataclass
class Job:
    """One input -> one output.  source/output None mean stdin/stdout."""

    source: Path | None
    output: Path | None
    format: str | None  # None only for stdout without --format: decided by the input
    label: str  # the input as shown to the user


@dataclass
class FileResult:
    """What happened to one input (one entry of the --json "files" list)."""

    input: str
    output: str | None
    status: str  # "done" | "skipped" | "failed"
    reason: str | None = None  # why skipped/failed, None when done
    width: int | None = None  # output size in pixels (done only)
    height: int | None = None
    seconds: float | None = None  # wall time from decode start to output written


@dataclass
class ApplyReport:
    """The whole run: per-file results and totals (the --json document)."""

    results: list[FileResult]
    seconds: float
    settings: dict[str, object] = field(default_factory=dict)

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def ok(self) -> bool:
        return self.count("failed") == 0

    def to_dict(self) -> dict[str, object]:
        done = self.count("done")
        return {
            "schema": SCHEMA,
            "ok": self.ok,
            "counts": {
                "total": len(self.results),
                "done": done,
                "skipped": self.count("skipped"),
                "failed": self.count("failed"),
            },
            "seconds": round(self.seconds, 4),
            "images_per_second": round(done / self.seconds, 3) if self.seconds > 0 else None,
            "settings": self.settings,
            "files": [asdict(r) for r in self.results],
        }


# -- planning -----------------------------------------------------------------------------


_MAGIC = set("*?[")


def _is_glob(text: str) -> bool:
    return any(c in _MAGIC for c in text) and not Path(text).exists()


def _glob_base(pattern: str) -> Path:
    """The leading folders of a pattern without wildcards ('a/b/*/c*.jpg' -> 'a/b')."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts[:-1]:
        if any(c in _MAGIC for c in part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _walk_images(root: Path, exclude: list[Path]) -> list[Path]:
    """Image files below root, sorted, skipping hidden entries and excluded folders."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        dirnames[:] = sorted(
            d
            for d in dirnames
            if not d.startswith(".") and not _inside_any((here / d).resolve(), exclude)
        )
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            if Path(name).suffix.lower() in images.IMAGE_SUFFIXES:
                found.append(here / name)
    return found


def _inside_any(path: Path, folders: list[Path]) -> bool:
    return any(path == f or f in path.parents for f in folders)


def _out_suffix(source: Path, fmt: str | None) -> str:
    fmt = fmt or images.format_for_suffix(source)
    if fmt is None:
        return ".png"  # inputs Pillow reads but stylize does not write (bmp, gif, ...)
    return source.suffix if images.format_for_suffix(source) == fmt else images.FORMATS[fmt][1]


def _output_is_file(output: str, n_inputs: int, single_file: bool) -> bool:
    p = Path(output)
    if p.is_dir() or output.endswith(("/", os.sep)):
        return False
    return n_inputs == 1 and single_file and images.format_for_suffix(p) is not None


def plan_jobs(inputs: list[str], options: ApplyOptions) -> tuple[list[Job], list[FileResult]]:
    """Inputs -> (jobs to run, results decided already: skipped / failed at planning).

    StylizeError for problems with the command as a whole (no inputs, "-" mixed with files,
    a missing input, -o naming a file for several inputs).
    """
    options.validate()
    if not inputs:
        raise StylizeError("no inputs: give image files, folders, glob patterns or - for stdin")
    out_opt = options.output
    if STDIO in inputs:
        if len(inputs) > 1:
            raise StylizeError("- (stdin) must be the only input")
        if out_opt is not None and out_opt != STDIO:
            if not _output_is_file(out_opt, 1, True):
                raise StylizeError(
                    f"-o {out_opt}: with - (stdin) as input, -o must name a file with an image "
                    "suffix (.png, .jpg, .webp, .tiff) or be - for stdout"
                )
            fmt = options.format or images.format_for_suffix(out_opt)
            return [Job(None, Path(out_opt), fmt, "<stdin>")], []
        return [Job(None, None, options.format, "<stdin>")], []

    # Expand inputs into (source, relative output path or None for "next to / -o file").
    entries: list[tuple[Path, Path | None, str]] = []  # (source, out_base, relative)
    out_dir = Path(out_opt) if out_opt else None
    exclude = [out_dir.resolve()] if out_dir else []
    single_file = len(inputs) == 1 and Path(inputs[0]).is_file()
    if out_opt and _output_is_file(out_opt, len(inputs), single_file):
        src = Path(inputs[0])
        fmt = options.format or images.format_for_suffix(out_opt)
        if options.format and images.format_for_suffix(out_opt) != options.format:
            raise StylizeError(
                f"-o {out_opt}: the suffix does not match --format {options.format}; "
                f"use a {images.FORMATS[options.format][1]} name or drop --format"
            )
        return _finish([(src, Path(out_opt), fmt, str(src))], options)
    if out_opt and (
        Path(out_opt).is_file()
        or (images.format_for_suffix(out_opt) is not None and not Path(out_opt).is_dir())
    ):
        raise StylizeError(
            f"-o {out_opt}: names a file, but the output must be a folder for "
            f"{'several inputs' if len(inputs) > 1 else 'a folder or pattern'}"
        )
    missing: list[FileResult] = []
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            parent = path.parent if path.name not in ("", ".", "..") else path.resolve().parent
            base = out_dir if out_dir else parent / (path.resolve().name + options.suffix)
            exclude_here = exclude + [base.resolve()]
            for f in _walk_images(path, exclude_here):
                entries.append((f, base, str(f.relative_to(path))))
        elif path.is_file():
            entries.append((path, out_dir, path.name))
        elif _is_glob(text):
            matches = sorted(Path(m) for m in glob.glob(text, recursive=True))
            matches = [m for m in matches if m.is_file() and not _inside_any(m.resolve(), exclude)]
            if not matches:
                missing.append(FileResult(text, None, "failed", "the pattern matches no files"))
            root = _glob_base(text)
            for m in matches:
                rel = os.path.relpath(m, root) if out_dir else m.name
                entries.append((m, out_dir, rel))
        else:
            missing.append(FileResult(text, None, "failed", "no such file or folder"))
    if not entries and not missing:
        raise StylizeError(f"no images found in {', '.join(inputs)}")
    planned = []
    for src, base, rel in entries:
        relp = Path(rel)
        ext = _out_suffix(src, options.format)
        parent = src.parent if base is None else base / relp.parent
        name = relp.stem + ext
        if base is None or (parent / name).resolve() == src.resolve():
            name = relp.stem + options.suffix + ext  # never the input's own name
        fmt = options.format or images.format_for_suffix(name) or "png"
        planned.append((src, parent / name, fmt, str(src)))
    jobs, early = _finish(planned, options)
    return jobs, missing + early


def _finish(
    planned: list[tuple[Path, Path, str | None, str]], options: ApplyOptions
) -> tuple[list[Job], list[FileResult]]:
    """Drop duplicates, refuse to overwrite inputs, skip existing outputs."""
    jobs: list[Job] = []
    early: list[FileResult] = []
    sources = {src.resolve() for src, *_ in planned}
    claimed: dict[Path, str] = {}
    seen_src: set[Path] = set()
    for src, out, fmt, label in planned:
        rsrc, rout = src.resolve(), out.resolve()
        if rsrc in seen_src:
            continue  # the same file named twice (e.g. a file and its folder)
        seen_src.add(rsrc)
        if rout in sources:
            early.append(
                FileResult(label, str(out), "failed", "output would overwrite an input file")
            )
        elif rout in claimed:
            early.append(
                FileResult(label, str(out), "failed", f"output collides with {claimed[rout]}'s")
            )
        elif out.exists() and not options.overwrite:
            claimed[rout] = label
            early.append(
                FileResult(label, str(out), "skipped", "output exists (use --overwrite)")
            )
        else:
            claimed[rout] = label
            jobs.append(Job(src, out, fmt, label))
    return jobs, early


# -- running ------------------------------------------------------------------------------


@dataclass
class _Decoded:
    job: Job
    image: images.DecodedImage
    pixels: torch.Tensor  # (H, W, 3) uint8
    started: float


def _decode(job: Job, options: ApplyOptions) -> _Decoded:

    t0 = time.perf_counter()
    if job.source is None:
        stream = options.stdin or sys.stdin.buffer
        src: object = stream.read()
        if not src:
            raise StylizeError("<stdin>: no data (pipe an image into stylize apply -)")
    else:
        src = job.source
    dec = images.decode(
        src,  # type: ignore[arg-type]
        name=job.label,
        max_pixels=options.max_pixels or None,
        max_size=options.max_size,
    )
    return _Decoded(job, dec, images.pil_to_pixels(dec.rgb), t0)


def _encode(d: _Decoded, out: torch.Tensor, options: ApplyOptions) -> FileResult:

    job = d.job
    fmt = job.format or d.image.format or "png"
    img = images.output_image(images.from_pixels(out), d.image.alpha, fmt)
    h, w = out.shape[:2]
    if job.output is None:
        data = images.encode_bytes(img, fmt, quality=options.quality, icc=d.image.icc_profile)
        stream = options.stdout or sys.stdout.buffer
        stream.write(data)
        stream.flush()
    else:
        images.encode(img, job.output, fmt, quality=options.quality, icc=d.image.icc_profile)
    out_label = "<stdout>" if job.output is None else str(job.output)
    return FileResult(
        job.label, out_label, "done", None, w, h, round(time.perf_counter() - d.started, 4)
    )


def _failed(job: Job, exc: BaseException) -> FileResult:
    reason = str(exc)
    prefix = f"{job.label}: "
    if reason.startswith(prefix):
        reason = reason[len(prefix) :]
    out = None if job.output is None else str(job.output)
    return FileResult(job.label, out, "failed", reason)


def run_jobs(
    stylizer: Stylizer,
    jobs: list[Job],
    early: list[FileResult],
    options: ApplyOptions,
    on_result: Callable[[FileResult], None] | None = None,
    on_plan: Callable[[int], None] | None = None,
) -> ApplyReport:
    """Run the pipeline: decode (threads) -> network (batches) -> encode (threads)."""
    t_start = time.perf_counter()
    options.validate()
    weights = stylizer.style_vector(options.style)  # a bad --style fails before any work
    results: list[FileResult] = []

    def report(r: FileResult) -> None:
        results.append(r)
        if on_result is not None:
            on_result(r)

    if on_plan is not None:
        on_plan(len(jobs) + len(early))
    for r in early:
        report(r)
    if jobs:
        stylizer.maybe_compile(len(jobs))
        workers = options.workers or max(1, min(8, (os.cpu_count() or 2) // 2))
        with (
            ThreadPoolExecutor(workers, thread_name_prefix="decode") as dpool,
            ThreadPoolExecutor(workers, thread_name_prefix="encode") as epool,
        ):
            try:
                _pipeline(stylizer, jobs, weights, options, dpool, epool, report)
            except BaseException:
                dpool.shutdown(wait=False, cancel_futures=True)
                epool.shutdown(wait=True, cancel_futures=True)
                raise
    order = {r.input: i for i, r in enumerate(early)}
    order.update({j.label: len(early) + i for i, j in enumerate(jobs)})
    results.sort(key=lambda r: order.get(r.input, len(order)))
    settings = stylizer.describe()
    settings.update(
        style=None if options.style is None else str(options.style),
        strength=options.strength,
        preserve_color=options.preserve_color,
        batch_size=options.batch_size,
    )
    return ApplyReport(results, time.perf_counter() - t_start, settings)


def _pipeline(stylizer, jobs, weights, options, dpool, epool, report) -> None:
    import torch

    lookahead = max(2 * options.batch_size, 4)
    pending: deque[tuple[Job, Future]] = deque()
    encodes: deque[tuple[Job, Future]] = deque()
    todo = iter(jobs)

    def fill() -> None:
        while len(pending) < lookahead:
            job = next(todo, None)
            if job is None:
                return
            pending.append((job, dpool.submit(_decode, job, options)))

    def drain(block_until: int) -> None:
        """Report finished encodes in order; block while more than block_until are queued."""
        while encodes and (encodes[0][1].done() or len(encodes) > block_until):
            job, fut = encodes.popleft()
            try:
                report(fut.result())
            except StylizeError as exc:
                report(_failed(job, exc))
            except OSError as exc:
                report(_failed(job, StylizeError(f"cannot write output ({exc})")))

    def flush(batch: list[_Decoded]) -> None:
        if not batch:
            return
        pixels = torch.stack([d.pixels for d in batch])  # (N, H, W, 3) uint8
        out = stylizer.stylize_pixels(pixels, weights, options.strength, options.preserve_color)
        for d, o in zip(batch, out, strict=True):
            encodes.append((d.job, epool.submit(_encode, d, o, options)))
        batch.clear()
        drain(block_until=2 * lookahead)

    fill()
    batch: list[_Decoded] = []
    while pending:
        job, fut = pending.popleft()
        fill()
        try:
            d = fut.result()
        except StylizeError as exc:
            report(_failed(job, exc))
            continue
        except Exception as exc:  # noqa: BLE001 - decoder bugs on hostile files stay per-file
            report(_failed(job, StylizeError(f"cannot read image ({type(exc).__name__}: {exc})")))
            continue
        if batch and (batch[0].pixels.shape != d.pixels.shape or len(batch) >= options.batch_size):
            flush(batch)
        batch.append(d)
        drain(block_until=2 * lookahead)
    flush(batch)
    drain(block_until=0)
