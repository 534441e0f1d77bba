"""Training data: folder scan, skipped files, crops, and the resumable, sharded sample order."""

from __future__ import annotations

import pytest
import torch
from train_support import make_photo, make_photos

from stylize.errors import StylizeError
from stylize.train.data import (
    DataOrder,
    PhotoDataset,
    StepSampler,
    load_crop,
    load_style_image,
    scan_photos,
)


def test_scan_is_recursive_and_counts_bad_files(tmp_path):
    make_photos(tmp_path, 4)
    (tmp_path / "readme.txt").write_text("not an image")
    (tmp_path / "more" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / ".hidden.jpg").write_bytes(b"junk")  # hidden: ignored, not counted
    (tmp_path / ".cache").mkdir()
    make_photo(0, 20, 20).save(tmp_path / ".cache" / "x.jpg")
    scan = scan_photos(tmp_path)
    relative = [p.relative_to(tmp_path).as_posix() for p in scan.paths]
    assert relative == ["more/photo1.jpg", "more/photo3.jpg", "photo0.jpg", "photo2.png"]
    assert sorted(p.name for p in scan.skipped) == ["broken.jpg", "empty.png", "readme.txt"]
    message = scan.skipped_message()
    assert "skipped 3 unreadable or non-image files" in message
    assert "more/broken.jpg" in message and "readme.txt" in message
    assert "and 1 more" in scan.skipped_message(shown=2)


def test_scan_of_missing_folder(tmp_path):
    with pytest.raises(StylizeError, match="--data .*not a folder"):
        scan_photos(tmp_path / "nope")


def test_crops_are_sized_seeded_and_flipped(tmp_path):
    path = tmp_path / "p.png"
    make_photo(3, 40, 70).save(path)
    a = load_crop(path, 32, torch.Generator().manual_seed(5))
    b = load_crop(path, 32, torch.Generator().manual_seed(5))
    assert a.shape == (3, 32, 32) and a.dtype == torch.uint8
    assert torch.equal(a, b)
    crops = {
        bytes(load_crop(path, 32, torch.Generator().manual_seed(s)).flatten().tolist())
        for s in range(12)
    }
    assert len(crops) > 3  # different positions / flips
    center = load_crop(path, 32)
    assert torch.equal(center, load_crop(path, 32))
    # a small image is upscaled so its short side reaches the crop size
    small = tmp_path / "small.jpg"
    make_photo(4, 10, 14).save(small)
    assert load_crop(small, 32, torch.Generator().manual_seed(0)).shape == (3, 32, 32)


def test_flip_is_a_mirror(tmp_path):
    """Among seeded crops of a square image (only flip varies), flipped == mirrored."""
    path = tmp_path / "sq.png"
    make_photo(9, 32, 32).save(path)
    crops = [load_crop(path, 32, torch.Generator().manual_seed(s)) for s in range(8)]
    plain = load_crop(path, 32)
    flipped = [c for c in crops if not torch.equal(c, plain)]
    assert flipped and all(torch.equal(c, plain.flip(-1)) for c in flipped)


def test_style_image(tmp_path):
    path = tmp_path / "s.png"
    make_photo(1, 30, 60).save(path)
    img = load_style_image(path, 40)
    assert img.shape == (1, 3, 40, 80) and float(img.min()) >= 0 and float(img.max()) <= 1
    (tmp_path / "bad.png").write_text("nope")
    with pytest.raises(StylizeError, match="--style .*bad.png"):
        load_style_image(tmp_path / "bad.png", 40)
    with pytest.raises(StylizeError, match="no such file"):
        load_style_image(tmp_path / "missing.png", 40)


def test_order_is_a_seeded_permutation_per_epoch():
    order = DataOrder(10, 4, seed=7, num_styles=3)
    assert order.steps_per_epoch == 2  # the partial batch is dropped
    epoch0 = order.global_batch(0) + order.global_batch(1)
    images = [s[0] for s in epoch0]
    assert len(set(images)) == 8 and all(0 <= i < 10 for i in images)
    epoch1 = [s[0] for s in order.global_batch(2) + order.global_batch(3)]
    assert epoch1 != images  # a new permutation each epoch
    assert {s[2] for s in epoch0 + order.global_batch(2)} <= {0, 1, 2}
    again = DataOrder(10, 4, seed=7, num_styles=3)
    assert [again.global_batch(t) for t in (3, 0)] == [order.global_batch(t) for t in (3, 0)]
    other = DataOrder(10, 4, seed=8, num_styles=3)
    assert other.global_batch(0) != order.global_batch(0)


def test_ranks_shard_each_global_batch():
    whole = DataOrder(12, 4, seed=1, num_styles=2)
    ranks = [DataOrder(12, 4, seed=1, num_styles=2, rank=r, world_size=2) for r in range(2)]
    for step in range(7):
        parts = ranks[0].local_batch_at(step) + ranks[1].local_batch_at(step)
        assert parts == whole.global_batch(step)
    with pytest.raises(StylizeError, match="divisible"):
        DataOrder(12, 3, seed=1, world_size=2)


def test_sampler_resumes_at_any_step():
    order = DataOrder(9, 2, seed=3)
    full = list(StepSampler(order, 0, 10))
    assert len(full) == 10 and list(StepSampler(order, 6, 10)) == full[6:]


def test_dataset_replaces_undecodable_file(tmp_path):
    make_photos(tmp_path, 3, nested=False)
    good = tmp_path / "photo0.jpg"
    broken = tmp_path / "photo1.jpg"
    broken.write_bytes(good.read_bytes()[:-300])  # a valid header, truncated data
    scan = scan_photos(tmp_path)
    assert broken in scan.paths  # the header is fine: only decoding finds out
    ds = PhotoDataset(scan.paths, 24)
    index = scan.paths.index(broken)
    crop, style, failed = ds[(index, 11, 1)]
    assert crop.shape == (3, 24, 24) and style == 1
    assert failed == str(broken)
    expected = load_crop(scan.paths[index + 1], 24, torch.Generator().manual_seed(11))
    assert torch.equal(crop, expected)
