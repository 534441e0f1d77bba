"""Decoding and encoding real-world images: modes, EXIF, ICC, limits, failures, atomic writes."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image, ImageCms

from stylize import images
from stylize.errors import StylizeError


def _srgb_icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _rgb(w: int = 6, h: int = 4, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _decode_saved(im: Image.Image, tmp_path, fmt: str = "PNG", **kw) -> images.DecodedImage:
    path = tmp_path / f"img.{fmt.lower()}"
    im.save(path, format=fmt, **kw)
    return images.decode(path)


# -- modes --------------------------------------------------------------------------------


def test_rgb_roundtrip_is_exact(tmp_path):
    im = _rgb()
    dec = _decode_saved(im, tmp_path)
    assert dec.rgb.mode == "RGB" and dec.alpha is None and dec.format == "png"
    assert np.array_equal(np.asarray(dec.rgb), np.asarray(im))


@pytest.mark.parametrize("mode", ["1", "L", "P"])
def test_grey_bilevel_palette_become_rgb(tmp_path, mode):
    src = _rgb().convert(mode)
    dec = _decode_saved(src, tmp_path)
    assert dec.rgb.mode == "RGB" and dec.alpha is None and dec.source_mode == mode
    assert np.array_equal(np.asarray(dec.rgb), np.asarray(src.convert("RGB")))


@pytest.mark.parametrize("mode", ["RGBA", "LA", "PA"])
def test_alpha_is_split_off(tmp_path, mode):
    base = _rgb()
    alpha = Image.fromarray(np.arange(24, dtype=np.uint8).reshape(4, 6) * 10)
    rgba = base.copy()
    rgba.putalpha(alpha)
    src = rgba if mode == "RGBA" else rgba.convert(mode)
    dec = images.decode(src)
    assert dec.rgb.mode == "RGB" and dec.alpha is not None and dec.alpha.mode == "L"
    assert np.array_equal(np.asarray(dec.alpha), np.asarray(alpha))
    if mode == "RGBA":
        assert np.array_equal(np.asarray(dec.rgb), np.asarray(base))


def test_palette_with_transparency_keeps_alpha(tmp_path):
    im = Image.new("P", (4, 3), 1)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    im.putpixel((0, 0), 0)
    im.info["transparency"] = 0
    dec = _decode_saved(im, tmp_path)
    a = np.asarray(dec.alpha)
    assert a[0, 0] == 0 and a[1, 1] == 255
    assert tuple(np.asarray(dec.rgb)[1, 1]) == (255, 0, 0)


def test_sixteen_bit_grey_is_scaled(tmp_path):
    values = np.array([[0, 257, 257 * 100, 65535]], dtype=np.uint16)
    path = tmp_path / "g16.png"
    Image.fromarray(values).save(path)
    dec = images.decode(path)
    assert dec.source_mode.startswith("I")
    assert np.asarray(dec.rgb)[0, :, 0].tolist() == [0, 1, 100, 255]


def test_int32_and_float_modes(tmp_path):
    i32 = Image.fromarray(np.array([[0, 1000, 70000]], dtype=np.int32))
    assert images.decode(i32).source_mode == "I"
    # 1000 / 257 = 3.9 -> 4; 70000 clamps to 255.
    assert np.asarray(images.decode(i32).rgb)[0, :, 1].tolist() == [0, 4, 255]
    small = Image.fromarray(np.array([[0, 7, 255]], dtype=np.int32))
    assert np.asarray(images.decode(small).rgb)[0, :, 1].tolist() == [0, 7, 255]
    f = Image.fromarray(np.array([[0.0, 0.5, 1.0, 1.2]], dtype=np.float32)[:, :3])
    assert np.asarray(images.decode(f).rgb)[0, :, 2].tolist() == [0, 128, 255]
    tif = tmp_path / "f.tiff"
    Image.fromarray(np.array([[0.0, 100.0, 255.0]], dtype=np.float32)).save(tif)
    assert np.asarray(images.decode(tif).rgb)[0, :, 0].tolist() == [0, 100, 255]


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    src = _rgb(16, 8)
    dec = _decode_saved(src.convert("CMYK"), tmp_path, "JPEG", quality=100)
    assert dec.rgb.mode == "RGB" and dec.source_mode == "CMYK" and dec.icc_profile is None
    diff = np.abs(np.asarray(dec.rgb, np.int16) - np.asarray(src, np.int16))
    assert diff.mean() < 12  # JPEG-lossy, but the same picture


# -- EXIF, ICC --------------------------------------------------------------------------


def test_exif_orientation_is_applied(tmp_path):
    im = Image.new("RGB", (4, 2), (0, 0, 0))
    im.putpixel((0, 0), (255, 0, 0))  # top-left red
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display = rotate 90 degrees clockwise
    path = tmp_path / "rot.png"
    im.save(path, exif=exif.tobytes())
    dec = images.decode(path)
    assert dec.rgb.size == (2, 4)
    assert tuple(np.asarray(dec.rgb)[0, 1]) == (255, 0, 0)  # top-left moved to top-right


def test_rgb_icc_profile_is_kept_and_written(tmp_path):
    icc = _srgb_icc()
    dec = _decode_saved(_rgb(), tmp_path, "PNG", icc_profile=icc)
    assert dec.icc_profile == icc
    for fmt in ("png", "jpg", "webp", "tiff"):
        out = tmp_path / f"out{images.FORMATS[fmt][1]}"
        images.encode(dec.rgb, out, fmt, icc=dec.icc_profile)
        with Image.open(out) as back:
            assert back.info.get("icc_profile") == icc, fmt


def test_non_rgb_icc_profile_is_dropped(tmp_path):
    lab = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()
    im = _rgb()
    im.info["icc_profile"] = lab
    assert images.decode(im).icc_profile is None


# -- sizes, limits, failures --------------------------------------------------------------


def test_max_size_downscales_keeping_aspect(tmp_path):
    dec = images.decode(_rgb(100, 50), max_size=20)
    assert dec.rgb.size == (20, 10)
    big = tmp_path / "big.jpg"
    _rgb(400, 200).save(big, quality=90)  # JPEG draft path (DCT-domain downscale)
    assert images.decode(big, max_size=50).rgb.size == (50, 25)
    assert images.decode(big, max_size=1000).rgb.size == (400, 200)


def test_pixel_limit_refuses_and_can_be_lifted(tmp_path):
    path = tmp_path / "big.png"
    _rgb(100, 100).save(path)
    with pytest.raises(StylizeError, match=r"big\.png.*too large.*--max-pixels"):
        images.decode(path, max_pixels=5000)
    assert images.decode(path, max_pixels=10_000).rgb.size == (100, 100)
    assert images.decode(path, max_pixels=None).rgb.size == (100, 100)


def test_pillow_bomb_error_is_translated_and_overridable(tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    _rgb(100, 100).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow refuses > 2000 pixels
    with pytest.raises(StylizeError, match=r"bomb\.png.*too large"):
        images.decode(path, max_pixels=1500)
    assert images.decode(path, max_pixels=0).rgb.size == (100, 100)
    assert Image.MAX_IMAGE_PIXELS == 1000  # restored


@pytest.mark.parametrize(
    "content, match",
    [
        (b"definitely not an image", "not an image"),
        (None, "truncated or corrupt"),
        (b"", "not an image"),
    ],
)
def test_bad_files_name_the_file(tmp_path, content, match):
    path = tmp_path / "bad.jpg"
    if content is None:
        buf = io.BytesIO()
        _rgb(64, 64).save(buf, "JPEG")
        content = buf.getvalue()[: len(buf.getvalue()) // 2]
    path.write_bytes(content)
    with pytest.raises(StylizeError, match=rf"bad\.jpg.*{match}"):
        images.decode(path)


def test_missing_and_directory(tmp_path):
    with pytest.raises(StylizeError, match="no such file"):
        images.decode(tmp_path / "nope.png")
    with pytest.raises(StylizeError, match="is a directory"):
        images.decode(tmp_path)


def test_bytes_input_and_stdin_name():
    buf = io.BytesIO()
    _rgb().save(buf, "WEBP", lossless=True)
    dec = images.decode(buf.getvalue())
    assert dec.format == "webp" and dec.rgb.size == (6, 4)
    with pytest.raises(StylizeError, match="<stdin>"):
        images.decode(b"junk")


# -- encoding -----------------------------------------------------------------------------


def test_encode_is_atomic_and_leaves_no_temp_files(tmp_path):
    out = tmp_path / "sub" / "o.png"
    images.encode(_rgb(), out, "png")
    assert out.exists() and os.listdir(out.parent) == ["o.png"]
    umask = os.umask(0)
    os.umask(umask)
    assert (out.stat().st_mode & 0o777) == (0o666 & ~umask)
    bad = tmp_path / "adir"
    bad.mkdir()
    with pytest.raises(StylizeError, match="adir"):
        images.encode(_rgb(), bad, "png")  # target is a folder: rename fails
    assert os.listdir(bad) == []


def test_output_image_alpha_only_where_supported():
    rgb, alpha = _rgb(), Image.new("L", (6, 4), 7)
    assert images.output_image(rgb, alpha, "png").mode == "RGBA"
    assert images.output_image(rgb, alpha, "jpg").mode == "RGB"
    assert images.output_image(rgb, None, "webp").mode == "RGB"


def test_formats_and_quality():
    assert images.normalize_format("JPEG") == "jpg" and images.normalize_format("tif") == "tiff"
    with pytest.raises(StylizeError, match="--format"):
        images.normalize_format("gif")
    im = _rgb(64, 64)
    small = images.encode_bytes(im, "jpg", quality=10)
    large = images.encode_bytes(im, "jpg", quality=95)
    assert len(small) < len(large)
    assert images.format_for_suffix("x.JPEG") == "jpg" and images.format_for_suffix("x.bmp") is None
