"""Image decoding and encoding: real-world files in, 8-bit RGB(A) out.

Decoding (`decode`) turns any file Pillow reads into a `DecodedImage`: 8-bit RGB pixels with the
EXIF orientation applied, the alpha channel (if any) split off to be re-attached after
stylizing, and the ICC profile kept when it describes RGB.  Mode handling:

- 1, L, P, CMYK, YCbCr, LAB, HSV: converted to RGB (CMYK through its ICC profile when present).
- LA, PA, RGBA, RGBa, P with a transparency key: RGB plus an 8-bit alpha plane.
- I;16*, I (16-bit PNG/TIFF) and F: scaled to 8 bits (16-bit ranges divide by 257; float images
  in [0, 1] multiply by 255).

A decompression-bomb guard (`max_pixels`) refuses absurd pixel counts from the header alone,
before any pixel is decoded.  Encoding (`encode`) writes through `stylize.fileio.atomic_path`,
so an interrupted run never leaves a half-written image behind.  `pil_to_pixels` and
`from_pixels` convert between RGB images and (H, W, 3) uint8 tensors for apply and training.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch
from PIL import Image, ImageCms, ImageFile, ImageOps, UnidentifiedImageError

from stylize.errors import StylizeError
from stylize.fileio import atomic_path

# stylize enforces its own pixel limit (`max_pixels`); Pillow's warning would only be noise.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

DEFAULT_MAX_PIXELS = 178_956_970  # Pillow's own hard limit: ~179 megapixels (e.g. 16000 x 11000)

# Output formats: CLI name -> (Pillow format, file suffix).
FORMATS: dict[str, tuple[str, str]] = {
    "png": ("PNG", ".png"),
    "jpg": ("JPEG", ".jpg"),
    "webp": ("WEBP", ".webp"),
    "tiff": ("TIFF", ".tiff"),
}
_FORMAT_ALIASES = {"jpeg": "jpg", "tif": "tiff"}
# Suffixes recognised as images when scanning folders (explicit files are always tried).
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".ppm", ".pgm"}
)
_SUFFIX_FORMAT = {
    ".jpg": "jpg",
    ".jpeg": "jpg",
    ".jpe": "jpg",
    ".png": "png",
    ".webp": "webp",
    ".tif": "tiff",
    ".tiff": "tiff",
}
_PIL_FORMAT = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp", "TIFF": "tiff"}
DEFAULT_QUALITY = {"jpg": 92, "webp": 90}
_PIL_LIMIT_LOCK = threading.Lock()


@dataclass
class DecodedImage:
    """One decoded image, ready for the network."""

    rgb: Image.Image  # mode "RGB", 8 bits per channel, orientation applied
    alpha: Image.Image | None  # mode "L", same size as rgb, or None
    icc_profile: bytes | None  # an RGB ICC profile to carry to the output, or None
    format: str | None  # "jpg" / "png" / "webp" / "tiff" when the input's format is writable
    source_mode: str  # the mode the file was stored in (for messages and tests)


def normalize_format(name: str) -> str:
    """'PNG' / 'jpeg' / 'tif' -> a key of FORMATS; StylizeError for anything else."""
    key = _FORMAT_ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in FORMATS:
        raise StylizeError(f"--format {name!r}: expected one of {', '.join(FORMATS)}")
    return key


def format_for_suffix(path: str | os.PathLike) -> str | None:
    """The output format a file name asks for ('.jpeg' -> 'jpg'), or None."""
    return _SUFFIX_FORMAT.get(Path(path).suffix.lower())


def _open(fp: BinaryIO, name: str, max_pixels: int | None) -> Image.Image:
    """Image.open with stylize's pixel limit instead of Pillow's (header only, no pixels)."""
    try:
        try:
            im = Image.open(fp)
        except Image.DecompressionBombError:
            pil_limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
            if max_pixels and max_pixels <= pil_limit:
                raise
            # The user raised the limit above Pillow's: reopen with Pillow's check off.
            fp.seek(0)
            with _PIL_LIMIT_LOCK:
                saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
                try:
                    im = Image.open(fp)
                finally:
                    Image.MAX_IMAGE_PIXELS = saved
    except Image.DecompressionBombError:
        raise StylizeError(
            f"{name}: image is too large (more than {max_pixels:,} pixels); "
            "pass --max-pixels 0 to lift the limit if you trust this file"
        ) from None
    except UnidentifiedImageError:
        raise StylizeError(f"{name}: not an image file (or a format Pillow cannot read)") from None
    except OSError as exc:
        raise StylizeError(f"{name}: image data is truncated or corrupt ({exc})") from None
    w, h = im.size
    if max_pixels and w * h > max_pixels:
        raise StylizeError(
            f"{name}: image is too large ({w}x{h} = {w * h:,} pixels, limit {max_pixels:,}); "
            "pass --max-pixels 0 (or a larger limit) if you trust this file"
        )
    if w < 1 or h < 1:
        raise StylizeError(f"{name}: image has no pixels ({w}x{h})")
    return im


def _to_8bit_grey(im: Image.Image) -> Image.Image:
    """I;16*, I and F images -> mode L, scaled by their nominal range, rounded and clamped."""
    import numpy as np

    a = np.asarray(im.convert("F") if im.mode.startswith("I;16") else im, dtype=np.float64)
    if im.mode.startswith("I;16"):
        factor = 1 / 257  # 0..65535 -> 0..255
    elif im.mode == "I":
        factor = 1 / 257 if a.size and (a.max() > 255 or a.min() < 0) else 1.0
    else:  # F: [0, 1] floats, else 8- or 16-bit ranges
        hi = float(a.max()) if a.size else 0.0
        factor = 255.0 if hi <= 1.0 else (1.0 if hi <= 255.0 else 1 / 257)
    a = np.clip(np.rint(np.nan_to_num(a) * factor), 0, 255).astype(np.uint8)
    return Image.fromarray(a)  # (H, W) uint8 -> mode L


def _icc_colour_space(icc: bytes | None) -> bytes | None:
    return icc[16:20] if icc and len(icc) >= 20 else None


def _split(im: Image.Image, icc: bytes | None) -> tuple[Image.Image, Image.Image | None]:
    """Any mode -> (RGB, alpha or None)."""
    mode = im.mode
    if mode == "P":
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
        mode = im.mode
    if mode == "PA":
        im, mode = im.convert("RGBA"), "RGBA"
    if mode in ("RGBa", "La"):
        im = im.convert("RGBA" if mode == "RGBa" else "LA")
        mode = im.mode
    if mode == "RGBA":
        return im.convert("RGB"), im.getchannel("A")
    if mode == "LA":
        return im.getchannel("L").convert("RGB"), im.getchannel("A")
    if mode.startswith("I") or mode == "F":
        return _to_8bit_grey(im).convert("RGB"), None
    if mode == "CMYK" and _icc_colour_space(icc) == b"CMYK":
        try:
            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            dst = ImageCms.createProfile("sRGB")
            return ImageCms.profileToProfile(im, src, dst, outputMode="RGB"), None
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass  # a broken profile: fall back to Pillow's naive conversion
    if mode != "RGB":
        im = im.convert("RGB")
    return im, None


def decode(
    source: str | os.PathLike | bytes | BinaryIO | Image.Image,
    *,
    name: str | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_size: int | None = None,
) -> DecodedImage:
    """Read an image (path, bytes, binary file or PIL image) into 8-bit RGB plus alpha.

    max_pixels: refuse images with more pixels (0 or None: no limit).
    max_size: downscale so the longest side is at most this many pixels (None: keep size).
    Raises StylizeError naming `name` (default: the path) for anything unreadable.
    """
    if isinstance(source, Image.Image):
        return _from_pil(source, name or "<image>", max_size)
    if isinstance(source, (str, os.PathLike)):
        name = name or str(source)
        try:
            with open(source, "rb") as fp:
                return _decode_fp(fp, name, max_pixels, max_size)
        except FileNotFoundError:
            raise StylizeError(f"{name}: no such file") from None
        except IsADirectoryError:
            raise StylizeError(f"{name}: is a directory, not an image") from None
        except PermissionError:
            raise StylizeError(f"{name}: permission denied") from None
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    return _decode_fp(source, name or "<stdin>", max_pixels, max_size)


def _decode_fp(
    fp: BinaryIO, name: str, max_pixels: int | None, max_size: int | None
) -> DecodedImage:
    im = _open(fp, name, max_pixels)
    fmt = _PIL_FORMAT.get(im.format or "")
    try:
        if max_size and im.format == "JPEG" and max(im.size) > 2 * max_size:
            # Let the JPEG decoder downscale by 2/4/8 in the DCT domain (much faster).
            scale = max_size / max(im.size)
            im.draft(im.mode, (max(1, int(im.width * scale)), max(1, int(im.height * scale))))
        im.load()
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise StylizeError(f"{name}: image data is truncated or corrupt ({exc})") from None
    return _from_pil(im, name, max_size, fmt)


def _from_pil(
    im: Image.Image, name: str, max_size: int | None, fmt: str | None = None
) -> DecodedImage:
    source_mode = im.mode
    icc = im.info.get("icc_profile") or None
    with contextlib.suppress(Exception):  # a malformed EXIF block must not lose the image
        im = ImageOps.exif_transpose(im)
    rgb, alpha = _split(im, icc)
    if max_size and max(rgb.size) > max_size:
        scale = max_size / max(rgb.size)
        size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
        rgb = rgb.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
        if alpha is not None:
            alpha = alpha.resize(size, Image.Resampling.LANCZOS)
    if _icc_colour_space(icc) != b"RGB ":
        icc = None  # grey or CMYK profiles do not describe the RGB output
    return DecodedImage(rgb=rgb, alpha=alpha, icc_profile=icc, format=fmt, source_mode=source_mode)


def output_image(rgb: Image.Image, alpha: Image.Image | None, fmt: str) -> Image.Image:
    """The image to save: RGB, or RGBA when there is an alpha plane and fmt can store it."""
    if alpha is not None and fmt != "jpg":
        out = rgb.copy()
        out.putalpha(alpha)
        return out
    return rgb


def _save_kwargs(fmt: str, quality: int | None, icc: bytes | None) -> dict:
    kwargs: dict = {}
    if fmt == "jpg":
        kwargs["quality"] = quality or DEFAULT_QUALITY["jpg"]
    elif fmt == "webp":
        kwargs["quality"] = quality or DEFAULT_QUALITY["webp"]
        kwargs["method"] = 4
    elif fmt == "png":
        kwargs["compress_level"] = 1  # fast; stylized images compress poorly at any level
    elif fmt == "tiff":
        kwargs["compression"] = "tiff_deflate"
    if icc:
        kwargs["icc_profile"] = icc
    return kwargs


def encode_bytes(
    image: Image.Image, fmt: str, *, quality: int | None = None, icc: bytes | None = None
) -> bytes:
    """Encode to bytes in the given format (a key of FORMATS)."""
    buf = io.BytesIO()
    image.save(buf, format=FORMATS[fmt][0], **_save_kwargs(fmt, quality, icc))
    return buf.getvalue()


def encode(
    image: Image.Image,
    path: str | os.PathLike,
    fmt: str,
    *,
    quality: int | None = None,
    icc: bytes | None = None,
) -> None:
    """Write image to path atomically (temporary file + rename) in the given format."""
    try:
        with atomic_path(path) as tmp:
            image.save(tmp, format=FORMATS[fmt][0], **_save_kwargs(fmt, quality, icc))
    except OSError as exc:
        raise StylizeError(f"{path}: cannot write output ({exc.strerror or exc})") from None


# Truncated files should fail loudly rather than decode with grey bands.
ImageFile.LOAD_TRUNCATED_IMAGES = False


# -- pixels <-> tensors ------------------------------------------------------------------------


def pil_to_pixels(rgb: Image.Image) -> torch.Tensor:
    """An RGB PIL image -> (H, W, 3) uint8 tensor (one copy)."""
    import numpy as np

    return torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy())


def from_pixels(pixels: torch.Tensor, alpha: Image.Image | None = None) -> Image.Image:
    """(H, W, 3) uint8 CPU tensor (+ alpha plane) -> PIL RGB / RGBA image."""
    img = Image.fromarray(pixels.numpy())
    if alpha is not None:
        img.putalpha(alpha)
    return img
