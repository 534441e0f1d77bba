"""Overlapping tiles for images too large to run through the network in one piece.

The image is cut into tiles of at most `tile` x `tile` pixels that overlap their neighbours by
at least `overlap` pixels.  Each tile is stylized on its own; the results are blended with
weights that ramp smoothly (raised cosine) from near 0 to 1 across the overlap, so no hard
seam is left.  Tile offsets are multiples of `align` (the network's total stride), so every
tile sees the same convolution grid as the whole image would.

Cost: every pixel in an overlap is computed twice (four times at corners): with tile T and
overlap O, about (T / (T - O))^2 times the work of one pass.  The instance-norm statistics are
per tile, so colours can still drift slightly from one tile to the next (the blending hides
the seam, not the drift).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def tile_starts(length: int, tile: int, overlap: int, align: int = 1) -> list[int]:
    """Start offsets of tiles covering [0, length) with at least `overlap` shared pixels.

    The first tile starts at 0, the last ends at `length`; starts in between are spread
    evenly and rounded down to multiples of `align` (never leaving a gap).
    """
    if tile >= length:
        return [0]
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap {overlap} must be in [0, tile={tile})")
    if tile - overlap - align < 1:
        align = 1
    # Spread n tiles evenly; rounding a start down to `align` widens a gap by < align,
    # so leave that much room: (length - tile) / (n - 1) <= tile - overlap - (align - 1).
    n = math.ceil((length - tile) / (tile - overlap - (align - 1))) + 1
    starts = [(i * (length - tile) // (n - 1)) // align * align for i in range(n - 1)]
    return sorted({*starts, length - tile})


def _ramp(size: int, lead: int, trail: int, device, dtype) -> torch.Tensor:
    """1-D blend weights (size,): raised-cosine ramps of `lead` / `trail` pixels, 1 between.

    Values are strictly positive so that every pixel has a non-zero total weight.
    """
    w = torch.ones(size, device=device, dtype=dtype)
    for n, sl in ((lead, slice(0, lead)), (trail, slice(size - trail, size))):
        if n > 0:
            t = (torch.arange(n, device=device, dtype=dtype) + 0.5) / n  # (0, 1)
            r = 0.5 - 0.5 * torch.cos(math.pi * t)
            w[sl] = r if sl.start == 0 else r.flip(0)
    return w


def run_tiled(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    tile: int,
    overlap: int = 128,
    align: int = 4,
) -> torch.Tensor:
    """Apply fn (N, C, h, w) -> (N, C', h, w) to x (N, C, H, W) tile by tile, blending overlaps.

    Returns (N, C', H, W) float32 on x's device.  With tile >= H and W this is one fn call.
    """
    n, _, h, w = x.shape
    if tile >= h and tile >= w:
        return fn(x).float()
    overlap = min(overlap, tile // 2)
    ys = tile_starts(h, tile, overlap, align)
    xs = tile_starts(w, tile, overlap, align)
    out: torch.Tensor | None = None
    weight_sum = torch.zeros(1, 1, h, w, device=x.device, dtype=torch.float32)
    for i, y0 in enumerate(ys):
        th = min(tile, h)
        # Ramp only towards neighbouring tiles, over the real overlap with them.
        top = ys[i - 1] + th - y0 if i > 0 else 0
        bottom = y0 + th - ys[i + 1] if i + 1 < len(ys) else 0
        wy = _ramp(th, top, bottom, x.device, torch.float32)
        for j, x0 in enumerate(xs):
            tw = min(tile, w)
            left = xs[j - 1] + tw - x0 if j > 0 else 0
            right = x0 + tw - xs[j + 1] if j + 1 < len(xs) else 0
            wx = _ramp(tw, left, right, x.device, torch.float32)
            y = fn(x[:, :, y0 : y0 + th, x0 : x0 + tw]).to(x.device, torch.float32)
            if out is None:
                out = torch.zeros(n, y.shape[1], h, w, device=x.device, dtype=torch.float32)
            wt = wy[:, None] * wx[None, :]  # (th, tw)
            out[:, :, y0 : y0 + th, x0 : x0 + tw] += y * wt
            weight_sum[:, :, y0 : y0 + th, x0 : x0 + tw] += wt
    assert out is not None
    return out.div_(weight_sum)
