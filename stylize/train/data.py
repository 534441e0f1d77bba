"""Training data: a recursive folder of photos, random crops, and a resumable sample order.

- `scan_photos(root)` finds every file under root (hidden files and folders excluded), keeps
  those PIL can identify as images and reports the others as skipped.
- `DataOrder` is the global sample order: for epoch e a permutation of the images seeded by
  (seed, e), cut into global batches of `batch_size`; global step t is batch t % steps_per_epoch
  of epoch t // steps_per_epoch (the last partial batch of an epoch is dropped).  Each sample
  also gets its own crop/flip seed and a style index from the same seeded stream, so the data
  depend only on (seed, step), never on workers, ranks, or on where a run was resumed.
  A DDP rank r of W takes samples [r*B/W, (r+1)*B/W) of each global batch.
- `PhotoDataset` turns one sample (image index, sample seed, style index) into a uint8 crop
  (3, S, S): short side resized to S, a random S x S crop, a random horizontal flip.  A file
  that fails to decode is replaced by the next image that decodes (deterministically) and
  reported back with the batch, so the trainer can warn once.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from stylize.errors import StylizeError
from stylize.images import decode, pil_to_pixels

_MIX = 0x9E3779B97F4A7C15  # golden-ratio constant for seed mixing


def _mix(*values: int) -> int:
    """A 63-bit seed from integers (splitmix64 steps), stable across runs and platforms."""
    x = 0
    for v in values:
        x = (x ^ (int(v) & 0xFFFFFFFFFFFFFFFF)) + _MIX & 0xFFFFFFFFFFFFFFFF
        x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        x = (x ^ (x >> 27)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x >> 1


# -- scanning ---------------------------------------------------------------------------------


@dataclass
class PhotoScan:
    root: Path
    paths: list[Path] = field(default_factory=list)  # usable images, sorted
    skipped: list[Path] = field(default_factory=list)  # files PIL cannot identify

    def skipped_message(self, shown: int = 5) -> str | None:
        """One warning line for the skipped files, or None when there are none."""
        if not self.skipped:
            return None
        names = [str(p.relative_to(self.root)) for p in self.skipped[:shown]]
        more = f" and {len(self.skipped) - shown} more" if len(self.skipped) > shown else ""
        return (
            f"--data {self.root}: skipped {len(self.skipped)} unreadable or non-image "
            f"file{'s' if len(self.skipped) != 1 else ''}: {', '.join(names)}{more}"
        )


def _is_image(path: Path) -> bool:
    try:
        with Image.open(path) as img:
            w, h = img.size
        return w > 0 and h > 0
    except Exception:  # not an image, unreadable, permission denied, decompression bomb, ...
        return False


def scan_photos(root: str | os.PathLike) -> PhotoScan:
    """All files under root (recursively, sorted, hidden ones excluded), split by readability."""
    root = Path(root)
    if not root.is_dir():
        raise StylizeError(f"--data {root}: not a folder; give a folder of photos")
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files += [Path(dirpath, f) for f in sorted(filenames) if not f.startswith(".")]
    files.sort()
    with ThreadPoolExecutor(max_workers=8) as pool:
        ok = list(pool.map(_is_image, files))
    scan = PhotoScan(root)
    for path, good in zip(files, ok, strict=True):
        (scan.paths if good else scan.skipped).append(path)
    return scan


# -- decoding ---------------------------------------------------------------------------------


def _open_rgb(path: Path, short_side: int, name: str | None = None) -> Image.Image:
    """Decode with `stylize.images.decode` (EXIF orientation, any colour mode, bomb guard, JPEG
    DCT downscaling), then resize so the short side is exactly `short_side` (or a pixel or two
    more, from decode's own downscale)."""
    with Image.open(path) as img:
        w, h = img.size
    # A long-side limit that leaves the short side >= short_side after decode's resize.
    limit = math.ceil(max(w, h) * short_side / min(w, h)) + 2
    img = decode(path, name=name, max_size=limit if max(w, h) > limit else None).rgb
    w, h = img.size
    if min(w, h) == short_side or (min(w, h) > short_side and max(w, h) <= limit):
        return img
    scale = short_side / min(w, h)
    size = (max(short_side, round(w * scale)), max(short_side, round(h * scale)))
    return img.resize(size, Image.Resampling.BICUBIC)


def load_crop(path: Path, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(3, size, size) uint8: short side -> size, then a random crop and flip (center, no flip
    when generator is None)."""
    img = _open_rgb(path, size)
    w, h = img.size
    if generator is None:
        left, top, flip = (w - size) // 2, (h - size) // 2, False
    else:
        left = int(torch.randint(w - size + 1, (), generator=generator))
        top = int(torch.randint(h - size + 1, (), generator=generator))
        flip = bool(torch.rand((), generator=generator) < 0.5)
    img = img.crop((left, top, left + size, top + size))
    if flip:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return pil_to_pixels(img).permute(2, 0, 1).contiguous()  # (3, size, size)


def load_style_image(path: str | os.PathLike, short_side: int) -> torch.Tensor:
    """A style image as (1, 3, H, W) float in [0, 1] with its short side resized."""
    path = Path(path)
    if not path.is_file():
        raise StylizeError(f"--style {path}: no such file")
    try:
        img = _open_rgb(path, short_side, name=f"--style {path}")
    except StylizeError:
        raise
    except Exception as exc:  # PIL cannot even identify it
        reason = " ".join(str(exc).split())[:160]
        raise StylizeError(f"--style {path}: cannot read it as an image ({reason})") from None
    return pil_to_pixels(img).permute(2, 0, 1).unsqueeze(0).float() / 255.0  # (1, 3, H, W)


# -- order and dataset ------------------------------------------------------------------------


class DataOrder:
    """The deterministic global sample order (see the module docstring)."""

    def __init__(
        self,
        num_images: int,
        batch_size: int,
        seed: int,
        num_styles: int = 1,
        rank: int = 0,
        world_size: int = 1,
    ):
        if batch_size % world_size:
            raise StylizeError(
                f"--batch-size {batch_size} must be divisible by the number of processes "
                f"({world_size})"
            )
        if num_images < batch_size:
            raise ValueError("fewer images than one batch")
        self.num_images, self.batch_size, self.seed = num_images, batch_size, seed
        self.num_styles, self.rank, self.world_size = num_styles, rank, world_size
        self.local_batch = batch_size // world_size
        self.steps_per_epoch = num_images // batch_size
        self._cached: tuple[int, tuple[list[int], list[int], list[int]]] | None = None

    def epoch_plan(self, epoch: int) -> tuple[list[int], list[int], list[int]]:
        """(image order, per-position sample seeds, per-position style indices) of an epoch."""
        if self._cached is None or self._cached[0] != epoch:
            g = torch.Generator().manual_seed(_mix(self.seed, epoch))
            order = torch.randperm(self.num_images, generator=g).tolist()
            seeds = torch.randint(2**62, (self.num_images,), generator=g).tolist()
            styles = torch.randint(self.num_styles, (self.num_images,), generator=g).tolist()
            self._cached = (epoch, (order, seeds, styles))
        return self._cached[1]

    def global_batch(self, step: int) -> list[tuple[int, int, int]]:
        """All samples (image index, sample seed, style index) of global step `step`."""
        epoch, pos = divmod(step, self.steps_per_epoch)
        order, seeds, styles = self.epoch_plan(epoch)
        span = range(pos * self.batch_size, (pos + 1) * self.batch_size)
        return [(order[i], seeds[i], styles[i]) for i in span]

    def local_batch_at(self, step: int) -> list[tuple[int, int, int]]:
        b = self.global_batch(step)
        return b[self.rank * self.local_batch : (self.rank + 1) * self.local_batch]


class StepSampler(Sampler):
    """Batch sampler yielding this rank's samples for steps [start, stop)."""

    def __init__(self, order: DataOrder, start: int, stop: int):
        self.order, self.start, self.stop = order, start, stop

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        for step in range(self.start, self.stop):
            yield self.order.local_batch_at(step)


class PhotoDataset(Dataset):
    """Sample (image index, seed, style) -> (uint8 crop (3, S, S), style, failed paths)."""

    def __init__(self, paths: list[Path], image_size: int):
        self.paths, self.image_size = list(paths), image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, sample: tuple[int, int, int]) -> tuple[torch.Tensor, int, str]:
        index, seed, style = sample
        failed: list[str] = []
        for k in range(len(self.paths)):
            path = self.paths[(index + k) % len(self.paths)]
            try:
                crop = load_crop(path, self.image_size, torch.Generator().manual_seed(seed))
                return crop, style, "\n".join(failed)
            except Exception:  # truncated or corrupt data behind a valid header
                failed.append(str(path))
        raise StylizeError("no image in --data could be decoded")
