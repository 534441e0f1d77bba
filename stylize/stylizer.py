"""`Stylizer`: one loaded model on one device, stylizing images and whole folders.

    from stylize import Stylizer
    st = Stylizer()                                   # bundled magenta26, best device
    st.stylize("photo.jpg", style=3).save("out.png")  # -> PIL image, same size as the input
    st.stylize(img, style="3:0.5,12:0.5", strength=0.8, preserve_color=True)
    report = st.stylize_files(["photos/"], ApplyOptions(output="out/", style=3))

Pixels go through the network as (N, 3, H, W) tensors in [0, 1] (channels-last memory, the
model's precision); `strength` mixes stylized and original, `preserve_color` keeps the input's
chroma (YCbCr Cb, Cr) and takes only the luminance Y from the stylized image.  Images larger
than the tile size are processed in overlapping tiles (stylize.tiling).
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import TYPE_CHECKING

import torch
from PIL import Image

from stylize import images, tiling
from stylize.device import resolve_device, resolve_precision
from stylize.errors import StylizeError

if TYPE_CHECKING:
    from stylize.batch import ApplyOptions, ApplyReport

# BT.601 luma weights (the Y of JPEG's YCbCr).
_LUMA = (0.299, 0.587, 0.114)
CPU_TILE = 3072  # default tile side on the CPU (activations ~1.2 GB per layer at fp32)
COMPILE_MODES = ("auto", "on", "off")


def _resolve_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(int(threads))


class Stylizer:
    """A model loaded once onto a device; stylizes images (`stylize`) and files (`stylize_files`).

    model: bundled name, model-file path, a `ModelFile`, or a `TransformerNet`.
    device: "auto" | "cpu" | "cuda" | "cuda:N";  precision: "auto" | "fp32" | "fp16" | "bf16"
    (auto: fp32 on the CPU, bf16/fp16 on CUDA).
    compile: "auto" (torch.compile on CUDA for folders of 8+ images; never on the CPU, where
    it measured no faster), "on", or "off".  tile_size: the largest side run in one piece
    (None: automatic from the device's memory).  threads: torch intra-op threads (None: keep).
    """

    def __init__(
        self,
        model: object = None,
        device: str = "auto",
        precision: str = "auto",
        *,
        compile: str = "auto",
        tile_size: int | None = None,
        threads: int | None = None,
    ):
        from stylize.checkpoint import ModelFile, load_model
        from stylize.nn.transformer import TransformerNet
        from stylize.zoo import DEFAULT_MODEL

        _resolve_threads(threads)
        if model is None:
            model = DEFAULT_MODEL
        if isinstance(model, TransformerNet):
            from stylize.checkpoint import default_style_names

            model = ModelFile(
                net=model, style_names=default_style_names(model.num_styles), source="<network>"
            )
        if not isinstance(model, ModelFile):
            model = load_model(model)  # type: ignore[arg-type]
        self.model = model
        self.device = resolve_device(device)
        self.dtype = resolve_precision(precision, self.device)
        if compile not in COMPILE_MODES:
            raise StylizeError(f"--compile {compile!r}: expected one of {', '.join(COMPILE_MODES)}")
        self.compile_mode = compile
        if tile_size is not None and tile_size < 64:
            raise StylizeError(f"--tile-size {tile_size}: must be at least 64 pixels")
        self.tile_size = tile_size or self._auto_tile()
        # Channels-last: oneDNN (CPU) and cuDNN (GPU) convolutions are faster in NHWC, and
        # uint8 HWC pixels become an NHWC tensor without a transpose copy.  Measured on a
        # 2-core AVX-512 CPU: the whole network 1.3x faster than NCHW (scripts/bench_apply.py).
        self.memory_format = torch.channels_last
        net = model.net.eval().requires_grad_(False)
        self.net = net.to(self.device, self.dtype, memory_format=self.memory_format)
        self._forward = self.net  # replaced by the compiled module when compiling pays off
        self._compiled = False
        self._lock = threading.Lock()

    # -- description -----------------------------------------------------------------------
    @property
    def num_styles(self) -> int:
        return self.model.num_styles

    @property
    def style_names(self) -> list[str]:
        return list(self.model.style_names)

    @property
    def source(self) -> str:
        return self.model.source

    @property
    def precision(self) -> str:
        return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[self.dtype]

    def _auto_tile(self) -> int:
        if self.device.type != "cuda":
            return CPU_TILE
        free, _total = torch.cuda.mem_get_info(self.device)
        # ~16 live activations of 32 channels per pixel at the network's precision.
        bytes_per_px = 32 * 16 * torch.finfo(self.dtype).bits // 8
        side = int((0.5 * free / bytes_per_px) ** 0.5)
        return max(512, min(16384, side // 64 * 64))

    def style_vector(self, style: object = None) -> torch.Tensor | None:
        """A style spec (index, name, "3:0.5,12:0.5", dict) -> (S,) weights on the device.

        None for single-style models (where only None, 0 or the style's name are accepted).
        """
        from stylize.styles import style_weights

        w = style_weights(style, self.num_styles, self.style_names)  # (S,) float32
        if not self.net.conditional:
            return None
        return w.to(self.device, self.dtype)

    # -- compilation -------------------------------------------------------------------------
    def maybe_compile(self, num_images: int) -> bool:
        """Switch to a torch.compile'd network when it pays off for `num_images` images.

        "auto": compile on CUDA for 8+ images (compilation takes tens of seconds, amortised
        over a folder), never on the CPU: there the instance-norm custom op cannot be fused by
        inductor and the compiled network measured no faster than eager (bench_apply.py),
        after 5-15 s of compiling per image size.  "on": compile whenever called.  Compiled
        kernels are cached on disk by torch (inductor's FX graph cache).
        """
        if self._compiled or self.compile_mode == "off":
            return self._compiled
        if self.compile_mode == "auto" and (num_images < 8 or self.device.type != "cuda"):
            return False
        if not _compile_available():
            return False
        self._forward = torch.compile(self.net, dynamic=False)
        self._compiled = True
        return True

    # -- the network on uint8 pixels --------------------------------------------------------
    @torch.inference_mode()
    def stylize_pixels(
        self,
        pixels: torch.Tensor,
        weights: torch.Tensor | None,
        strength: float = 1.0,
        preserve_color: bool = False,
    ) -> torch.Tensor:
        """(N, H, W, 3) uint8 (any device) -> (N, H, W, 3) uint8 on the CPU."""
        _check_strength(strength)
        x8 = pixels.to(self.device, non_blocking=True).permute(0, 3, 1, 2)  # (N, 3, H, W) NHWC
        x8 = x8.contiguous(memory_format=self.memory_format)
        x = x8.to(self.dtype).mul_(1 / 255)  # (N, 3, H, W) in [0, 1]
        n = x.shape[0]
        w = None if weights is None else weights.expand(n, -1)  # (N, S)
        y = self.run_network(x, w)  # (N, 3, H, W) float, [0, 1]
        y = y.float()
        if preserve_color or strength != 1.0:
            xf = x8.float().mul_(1 / 255)  # exact input values (not rounded to dtype)
            if preserve_color:
                y = transfer_luminance(y, xf)
            if strength != 1.0:
                y = torch.lerp(xf, y, float(strength))
        out = y.mul_(255).round_().clamp_(0, 255).to(torch.uint8)  # (N, 3, H, W)
        return out.permute(0, 2, 3, 1).contiguous().cpu()  # (N, H, W, 3)

    def run_network(self, x: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
        """x (N, 3, H, W) in [0, 1] -> (N, 3, H, W); tiles when larger than the tile size."""
        _, _, h, wd = x.shape

        def fn(t: torch.Tensor) -> torch.Tensor:
            return self._forward(t.contiguous(memory_format=self.memory_format), w)

        tile = self.tile_size
        while True:
            try:
                if max(h, wd) <= tile:
                    return fn(x)
                return tiling.run_tiled(fn, x, tile, align=self.net.config.total_stride)
            except torch.OutOfMemoryError:
                if self.device.type != "cuda" or tile <= 512:
                    raise
                torch.cuda.empty_cache()
                tile = max(512, min(tile, max(h, wd)) // 2)
                self.tile_size = tile  # remember for the next images

    # -- single images ------------------------------------------------------------------------
    def stylize(
        self,
        image: object,
        style: object = None,
        strength: float = 1.0,
        preserve_color: bool = False,
    ) -> Image.Image:
        """Stylize one image; returns a PIL image of the input's size (RGBA if it had alpha).

        image: a path, a PIL image, an (H, W, 3) uint8 array/tensor, or a float tensor
        (3, H, W) / (1, 3, H, W) in [0, 1].  style: index, name, "3:0.5,12:0.5" or a dict.
        """
        pixels, alpha = to_pixels(image)
        weights = self.style_vector(style)
        out = self.stylize_pixels(pixels[None], weights, strength, preserve_color)[0]
        return images.from_pixels(out, alpha)

    # -- files and folders --------------------------------------------------------------------
    def stylize_files(
        self,
        inputs: list[str | os.PathLike],
        options: ApplyOptions | None = None,
        on_result=None,
        on_plan=None,
    ) -> ApplyReport:
        """Stylize files, folders (recursively, mirrored) and glob patterns; see stylize.batch.

        on_plan(n_jobs) is called once the work is known, on_result(FileResult) after each file.
        Per-file problems become "failed" results; the run goes on.
        """
        from stylize.batch import ApplyOptions, plan_jobs, run_jobs

        options = options or ApplyOptions()
        jobs, early = plan_jobs([str(p) for p in inputs], options)
        return run_jobs(self, jobs, early, options, on_result=on_result, on_plan=on_plan)

    def describe(self) -> dict[str, object]:
        return {
            "model": self.source,
            "num_styles": self.num_styles,
            "device": str(self.device),
            "precision": self.precision,
            "compiled": self._compiled,
            "tile_size": self.tile_size,
        }


# -- helpers ------------------------------------------------------------------------------------


def _check_strength(strength: float) -> None:
    if not 0.0 <= float(strength) <= 1.0:
        raise StylizeError(f"--strength {strength}: must be between 0 and 1")


def _compile_available() -> bool:
    """torch.compile needs a working C++ compiler on the CPU (inductor)."""
    import shutil

    return bool(shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++"))


def transfer_luminance(stylized: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """Keep original's chroma, take stylized's luma (YCbCr, BT.601); both (N, 3, H, W) in [0, 1].

    Adding the same value to R, G and B leaves Cb = 0.564 (B - Y) and Cr = 0.713 (R - Y)
    unchanged, so original + (Y_stylized - Y_original) has exactly the wanted Y, Cb, Cr.
    """
    luma = torch.tensor(_LUMA, device=stylized.device, dtype=stylized.dtype).view(1, 3, 1, 1)
    dy = ((stylized - original) * luma).sum(dim=1, keepdim=True)  # (N, 1, H, W)
    return (original + dy).clamp_(0.0, 1.0)


def to_pixels(image: object) -> tuple[torch.Tensor, Image.Image | None]:
    """Any supported image -> ((H, W, 3) uint8 CPU tensor, alpha plane or None)."""
    if isinstance(image, (str, os.PathLike, Image.Image, bytes)):
        dec = images.decode(image)
        return images.pil_to_pixels(dec.rgb), dec.alpha
    if isinstance(image, torch.Tensor):
        t = image.detach()
        if t.dtype == torch.uint8 and t.dim() == 3 and t.shape[-1] == 3:
            return t.cpu().contiguous(), None
        if t.dim() == 4 and t.shape[0] == 1:
            t = t[0]
        if t.dim() == 3 and t.shape[0] == 3 and t.is_floating_point():
            t = t.float().clamp(0, 1).mul(255).round().to(torch.uint8)
            return t.permute(1, 2, 0).cpu().contiguous(), None
        raise StylizeError(
            f"image tensor of shape {tuple(t.shape)} and dtype {t.dtype}: expected (H, W, 3) "
            "uint8 or (3, H, W) / (1, 3, H, W) float in [0, 1]"
        )
    with contextlib.suppress(ImportError):
        import numpy as np

        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise StylizeError(
                    f"image array of shape {image.shape} and dtype {image.dtype}: "
                    "expected (H, W, 3) uint8"
                )
            return torch.from_numpy(np.ascontiguousarray(image)), None
    raise StylizeError(
        f"cannot stylize a {type(image).__name__}: pass a path, a PIL image, an (H, W, 3) uint8 "
        "array or a float tensor"
    )

