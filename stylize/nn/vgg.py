"""The perceptual loss network: frozen VGG16 features up to relu4_3, and its weights.

`VGGFeatures` takes images in [0, 1] (N, 3, H, W), normalizes them with the ImageNet mean and
standard deviation (the only place in the project that does), and returns the activations of
the requested ReLU layers.  Its layers have the indices of torchvision's `vgg16().features`,
so a torchvision state dict loads directly.

Weights (`load_vgg16_state_dict`):
- a file: a torchvision VGG16 state dict as torchvision saves and downloads it
  (`vgg16-397923af.pth`, keys `features.N.*` and `classifier.*`), or one holding only the
  `features.*` keys (or the bare `N.weight` keys of the features Sequential);
- no file: torchvision's `VGG16_Weights.IMAGENET1K_V1` (torch hub cache, else download).
Either failing is one StylizeError that says what to do.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import nn

from stylize.errors import StylizeError

# VGG16 configuration "D" up to relu4_3: conv widths, "M" = 2x2 max pool.
_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512)

# ReLU layer name -> index in torchvision's vgg16().features.
LAYERS: dict[str, int] = {
    "relu1_1": 1,
    "relu1_2": 3,
    "relu2_1": 6,
    "relu2_2": 8,
    "relu3_1": 11,
    "relu3_2": 13,
    "relu3_3": 15,
    "relu4_1": 18,
    "relu4_2": 20,
    "relu4_3": 22,
}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHTS_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
WEIGHTS_FILE = "vgg16-397923af.pth"


def check_layers(names: Iterable[str], option: str = "--style-layers") -> tuple[str, ...]:
    """Validate VGG layer names; StylizeError naming the option and the valid names."""
    names = tuple(n.strip() for n in names)
    bad = [n for n in names if n not in LAYERS]
    if bad or not names:
        raise StylizeError(
            f"{option}: unknown VGG16 layer(s) {', '.join(bad) or '(none given)'}; "
            f"choose from {', '.join(LAYERS)}"
        )
    return names


def _build_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    c_in = 3
    for v in _CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(c_in, v, kernel_size=3, padding=1), nn.ReLU(inplace=False)]
            c_in = v
    return nn.Sequential(*layers)  # indices 0..22, as torchvision's features[:23]


class VGGFeatures(nn.Module):
    """Frozen VGG16 features: images (N, 3, H, W) in [0, 1] -> {layer name: activation}."""

    def __init__(self, state_dict: dict[str, torch.Tensor] | None = None):
        super().__init__()
        self.features = _build_features()
        if state_dict is not None:
            self.features.load_state_dict(state_dict)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> VGGFeatures:  # always frozen, always eval
        return super().train(False)

    def forward(self, x: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
        """x (N, 3, H, W) in [0, 1]; runs only as deep as the deepest requested layer."""
        wanted = {LAYERS[name]: name for name in layers}
        last = max(wanted)
        h = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)  # ImageNet-normalized
        out: dict[str, torch.Tensor] = {}
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in wanted:
                out[wanted[i]] = h  # (N, C_layer, H / 2^k, W / 2^k)
            if i == last:
                break
        return out


def _features_only(state: object, source: str) -> dict[str, torch.Tensor]:
    """Keep the conv weights of features[:23] from a full or features-only state dict."""
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise StylizeError(
            f"{source}: not a VGG16 state dict (got {type(state).__name__}); pass a torchvision "
            f"VGG16 weights file such as {WEIGHTS_FILE}"
        )
    expected = _build_features().state_dict()
    out: dict[str, torch.Tensor] = {}
    for key in expected:
        value = state.get(f"features.{key}", state.get(key))
        if not isinstance(value, torch.Tensor):
            raise StylizeError(
                f"{source}: no VGG16 weight 'features.{key}'; pass a torchvision VGG16 state "
                f"dict ({WEIGHTS_FILE}) or one with its features.* keys"
            )
        if value.shape != expected[key].shape:
            raise StylizeError(
                f"{source}: 'features.{key}' has shape {tuple(value.shape)}, VGG16 needs "
                f"{tuple(expected[key].shape)}; is this a VGG16 (not VGG19/VGG11) file?"
            )
        out[key] = value.float()
    return out


def _download_hint() -> str:
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    return (
        f"download {WEIGHTS_URL} on a machine with internet access and pass it with "
        f"--vgg-weights FILE (or copy it to {cache}/)"
    )


def load_vgg16_state_dict(path: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """The features.* weights of VGG16 (bare keys '0.weight', ...) from a file or torchvision."""
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise StylizeError(f"--vgg-weights {path}: no such file")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated, not a torch file, pickled code, ...
            reason = " ".join(str(exc).split())[:200]
            raise StylizeError(
                f"--vgg-weights {path}: cannot read it as a torch state dict ({reason}); "
                f"pass a torchvision VGG16 weights file such as {WEIGHTS_FILE}"
            ) from None
        return _features_only(state, f"--vgg-weights {path}")

    from torchvision.models import VGG16_Weights

    try:
        state = VGG16_Weights.IMAGENET1K_V1.get_state_dict(
            progress=True, check_hash=True, weights_only=True
        )
    except Exception as exc:  # offline (URLError), bad hash, corrupt cache file, ...
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise StylizeError(
            f"cannot get torchvision's pretrained VGG16 weights ({reason}); {_download_hint()}"
        ) from None
    return _features_only(state, "torchvision VGG16_Weights.IMAGENET1K_V1")


def load_vgg(path: str | os.PathLike | None = None) -> VGGFeatures:
    """A frozen VGGFeatures on the CPU in float32 with weights from `path` or torchvision."""
    return VGGFeatures(load_vgg16_state_dict(path))
