"""Shared, cached inputs for the training tests (a helper module, not a test module).

- a VGG16 with seeded random weights (torchvision.models.vgg16(weights=None)), saved once per
  session as a features.*-only state dict (no pretrained weights are downloaded in tests);
- a few small generated photos and two generated style images.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from PIL import Image

from stylize.images import from_pixels

_CACHE: dict[str, Path] = {}


def _image(t: torch.Tensor) -> Image.Image:
    """(3, H, W) float [0, 1] -> PIL RGB."""
    data = (t.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0)  # (H, W, 3)
    return from_pixels(data.contiguous())


def vgg_weights_file(base: Path) -> Path:
    """A seeded random VGG16 features state dict file (built once per session)."""
    if "vgg" not in _CACHE:
        import torchvision

        torch.manual_seed(1234)
        model = torchvision.models.vgg16(weights=None)
        state = {k: v for k, v in model.state_dict().items() if k.startswith("features.")}
        path = base / "vgg16_random_features.pth"
        torch.save(state, path)
        _CACHE["vgg"] = path
    return _CACHE["vgg"]


def make_photo(seed: int, height: int, width: int) -> Image.Image:
    """A smooth random colour field plus a little noise: photo-like enough for tests."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 4, 4, generator=g)
    smooth = torch.nn.functional.interpolate(
        coarse, size=(height, width), mode="bicubic", align_corners=False
    )[0]
    noise = 0.05 * torch.randn(3, height, width, generator=g)
    return _image(smooth + noise)


def make_photos(folder: Path, count: int = 6, nested: bool = True) -> Path:
    """`count` small JPEG/PNG photos of different sizes, some in a sub-folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        sub = folder / "more" if nested and i % 2 else folder
        sub.mkdir(exist_ok=True)
        ext = "png" if i % 3 == 2 else "jpg"
        make_photo(100 + i, 40 + 4 * i, 56 - 2 * i).save(sub / f"photo{i}.{ext}")
    return folder


def make_style(path: Path, kind: int) -> Path:
    """Two very different synthetic paintings: red diagonal stripes, or blue/yellow checks."""
    h, w = 48, 64
    y = torch.arange(h).view(h, 1).float()
    x = torch.arange(w).view(1, w).float()
    if kind == 0:
        s = 0.5 + 0.5 * torch.sin((x + y) * 2 * math.pi / 8)
        img = torch.stack([0.3 + 0.7 * s, 0.1 * s, 0.1 + 0.0 * s])
    else:
        c = ((x // 6 + y // 6) % 2).float()
        img = torch.stack([c, c, 1 - c * 0.9])
    path.parent.mkdir(parents=True, exist_ok=True)
    _image(img).save(path)
    return path


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
