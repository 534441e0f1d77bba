"""Perceptual losses for training a style network (Johnson et al. 2016).

- content: mean squared difference of the VGG activations of the output and the content photo
  at the content layer (relu2_2 by default);
- style: sum over the style layers of the mean squared difference between Gram matrices,
  each Gram normalized by C*H*W of its layer, the target Gram being that of the sample's style;
- total variation: mean squared difference of horizontally plus vertically adjacent pixels.

All three are computed in float32 even under autocast; images are in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from stylize.nn.vgg import VGGFeatures


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, C) float32, normalized by C*H*W."""
    n, c, h, w = features.shape
    with torch.autocast(features.device.type, enabled=False):
        f = features.float().reshape(n, c, h * w)  # (N, C, HW)
        return torch.bmm(f, f.transpose(1, 2)) / (c * h * w)  # (N, C, C)


def content_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of two activations (N, C, H, W), in float32."""
    return F.mse_loss(output.float(), target.float())


def style_loss(
    features: dict[str, torch.Tensor], target_grams: dict[str, torch.Tensor]
) -> torch.Tensor:
    """Sum over layers of mse(gram(features[l]) (N, C, C), target_grams[l] (N, C, C))."""
    total = torch.zeros((), device=next(iter(features.values())).device)
    for name, target in target_grams.items():
        total = total + F.mse_loss(gram_matrix(features[name]), target)
    return total


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Mean squared neighbour difference of (N, C, H, W), horizontal plus vertical."""
    x = images.float()
    dh = x[:, :, 1:, :] - x[:, :, :-1, :]  # (N, C, H-1, W)
    dw = x[:, :, :, 1:] - x[:, :, :, :-1]  # (N, C, H, W-1)
    return dh.pow(2).mean() + dw.pow(2).mean()


class PerceptualLoss(nn.Module):
    """Weighted content + style + TV loss against S precomputed style targets.

    forward(output, content, style_index) with output/content (N, 3, H, W) in [0, 1] and
    style_index (N,) long in [0, S) returns a dict of float32 scalars: the weighted terms
    'content', 'style', 'tv', and their sum 'total'.
    """

    def __init__(
        self,
        vgg: VGGFeatures,
        style_images: Sequence[torch.Tensor],
        content_layer: str = "relu2_2",
        style_layers: Sequence[str] = ("relu1_2", "relu2_2", "relu3_3", "relu4_3"),
        content_weight: float = 1e5,
        style_weight: float = 1e10,
        tv_weight: float = 0.0,
    ):
        super().__init__()
        self.vgg = vgg
        self.content_layer = content_layer
        self.style_layers = tuple(style_layers)
        self.weights = (float(content_weight), float(style_weight), float(tv_weight))
        self.num_styles = len(style_images)
        grams = self.style_grams(style_images)
        for name in self.style_layers:
            self.register_buffer(f"gram_{name}", grams[name])  # (S, C, C)

    @torch.no_grad()
    def style_grams(self, style_images: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Gram matrices of each style image (1, 3, H_s, W_s) -> {layer: (S, C, C)}."""
        per_style = [self.vgg(img, self.style_layers) for img in style_images]
        return {
            name: torch.cat([gram_matrix(f[name]) for f in per_style]) for name in self.style_layers
        }

    def forward(
        self, output: torch.Tensor, content: torch.Tensor, style_index: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        w_content, w_style, w_tv = self.weights
        layers = tuple(dict.fromkeys((*self.style_layers, self.content_layer)))
        feats = self.vgg(output, layers)
        with torch.no_grad():
            target = self.vgg(content, (self.content_layer,))[self.content_layer]
        c = content_loss(feats[self.content_layer], target)
        targets = {n: getattr(self, f"gram_{n}")[style_index] for n in self.style_layers}
        s = style_loss(feats, targets)
        tv = total_variation(output) if w_tv else torch.zeros((), device=output.device)
        terms = {"content": w_content * c, "style": w_style * s, "tv": w_tv * tv}
        terms["total"] = terms["content"] + terms["style"] + terms["tv"]
        return terms
