"""Overlapping tiles: coverage, alignment, exact blending of pointwise maps, no seams."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from stylize.tiling import run_tiled, tile_starts


@pytest.mark.parametrize("seed", range(40))
def test_tile_starts_cover_with_overlap_and_alignment(seed):
    rng = random.Random(seed)
    tile = rng.randrange(16, 300)
    overlap = rng.randrange(0, tile // 2 + 1)
    length = rng.randrange(1, 2000)
    align = rng.choice([1, 2, 4, 8])
    starts = tile_starts(length, tile, overlap, align)
    if length <= tile:
        assert starts == [0]
        return
    assert starts[0] == 0 and starts[-1] + tile == length
    assert starts == sorted(set(starts))
    for a, b in zip(starts, starts[1:], strict=False):
        assert b - a <= tile - overlap  # consecutive tiles share >= overlap pixels
    assert all(s % align == 0 for s in starts[:-1])
    # Not wasteful: about (length - tile) / (tile - overlap) + 1 tiles.
    room = tile - overlap - (align - 1) if tile - overlap - align >= 1 else tile - overlap
    assert len(starts) <= (length - tile) / room + 2


def test_pointwise_map_is_reproduced_exactly():
    x = torch.rand(2, 3, 131, 257, dtype=torch.float32)
    calls = []

    def fn(t):
        calls.append(tuple(t.shape[-2:]))
        return t * 2.0 + 1.0

    y = run_tiled(fn, x, tile=64, overlap=16)
    assert len(calls) > 4 and all(h <= 64 and w <= 64 for h, w in calls)
    torch.testing.assert_close(y, x * 2.0 + 1.0, rtol=0, atol=1e-5)


def test_small_image_is_one_call():
    x = torch.rand(1, 3, 40, 50)
    calls = []
    y = run_tiled(lambda t: calls.append(1) or t.flip(-1), x, tile=64)
    assert len(calls) == 1 and torch.equal(y, x.flip(-1))


def test_local_filter_has_no_seams():
    """A 5x5 blur run in tiles matches the whole-image blur: the overlap hides tile borders."""
    torch.manual_seed(0)
    x = torch.rand(1, 3, 150, 190, dtype=torch.float64)
    kernel = torch.full((3, 1, 5, 5), 1 / 25, dtype=torch.float64)

    def blur(t):
        return F.conv2d(F.pad(t, (2, 2, 2, 2), mode="replicate"), kernel, groups=3)

    whole = blur(x)
    tiled = run_tiled(blur, x, tile=64, overlap=32, align=4).double()
    # Tile-border pixels (wrong there) get ramp weights < 0.006; interior agrees exactly.
    assert (tiled - whole).abs().max() < 2e-3
    assert (tiled - whole).abs().mean() < 1e-4


def test_channel_change_and_dtype():
    x = torch.rand(1, 3, 70, 70, dtype=torch.bfloat16)
    y = run_tiled(lambda t: t[:, :1].float(), x, tile=32, overlap=8)
    assert y.shape == (1, 1, 70, 70) and y.dtype == torch.float32
    torch.testing.assert_close(y, x[:, :1].float(), rtol=0, atol=1e-5)
