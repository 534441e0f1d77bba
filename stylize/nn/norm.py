"""Normalization layers on the instance-norm operator (stylize.ops.instance_norm).

- InstanceNorm2d: per-channel affine, state-dict compatible with
  torch.nn.InstanceNorm2d(C, affine=True) (keys `weight`, `bias`), optional fused ReLU.
- ConditionalInstanceNorm2d: S styles, scale/shift tables (S, C); forward takes per-sample
  style weights (N, S): one-hot picks a style, fractional weights blend the scale/shift.
- adaptive_instance_norm: AdaIN, content normalized then given the style features' per-channel
  mean and standard deviation.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from stylize.ops import instance_norm


class InstanceNorm2d(nn.Module):
    """Instance norm with learnable per-channel weight (C,) and bias (C,); x (N, C, H, W)."""

    def __init__(self, num_features: int, eps: float = 1e-5, activation: str | None = None):
        super().__init__()
        self.num_features, self.eps, self.activation = num_features, eps, activation
        self.weight = nn.Parameter(torch.ones(num_features))  # (C,)
        self.bias = nn.Parameter(torch.zeros(num_features))  # (C,)

    def forward(self, x: Tensor) -> Tensor:
        return instance_norm(x, self.weight, self.bias, self.eps, self.activation)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, activation={self.activation}"


class ConditionalInstanceNorm2d(nn.Module):
    """Instance norm whose scale/shift are blends of S per-style rows (Dumoulin et al. 2017)."""

    def __init__(
        self, num_features: int, num_styles: int, eps: float = 1e-5, activation: str | None = None
    ):
        super().__init__()
        self.num_features, self.num_styles = num_features, num_styles
        self.eps, self.activation = eps, activation
        self.scale = nn.Parameter(torch.ones(num_styles, num_features))  # (S, C)
        self.shift = nn.Parameter(torch.zeros(num_styles, num_features))  # (S, C)

    def forward(self, x: Tensor, style_weights: Tensor) -> Tensor:
        """x (N, C, H, W); style_weights (N, S) or (S,) (same blend for every sample)."""
        sw = style_weights
        if sw.dim() == 1:
            sw = sw.unsqueeze(0).expand(x.shape[0], -1)
        if sw.dim() != 2 or sw.shape[1] != self.num_styles or sw.shape[0] != x.shape[0]:
            raise ValueError(
                f"ConditionalInstanceNorm2d: style_weights must have shape (N, S)="
                f"({x.shape[0]}, {self.num_styles}), got {tuple(style_weights.shape)}"
            )
        sw = sw.to(self.scale.dtype)
        weight = sw @ self.scale  # (N, C)
        bias = sw @ self.shift  # (N, C)
        return instance_norm(x, weight, bias, self.eps, self.activation)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, num_styles={self.num_styles}, eps={self.eps}, "
            f"activation={self.activation}"
        )


def adaptive_instance_norm(content: Tensor, style_features: Tensor, eps: float = 1e-5) -> Tensor:
    """AdaIN: normalize content (N, C, H, W) per plane, then scale by the style's per-channel
    std sqrt(var + eps) and shift by its mean.  style_features: (N or 1, C, Hs, Ws)."""
    if style_features.dim() != 4 or content.dim() != 4:
        raise ValueError("adaptive_instance_norm: content and style must be (N, C, H, W)")
    n, c = content.shape[:2]
    if style_features.shape[1] != c or style_features.shape[0] not in (1, n):
        raise ValueError(
            f"adaptive_instance_norm: style features {tuple(style_features.shape)} do not "
            f"match content {tuple(content.shape)} (need (N or 1, C, Hs, Ws))"
        )
    var, mean = torch.var_mean(style_features.float(), dim=(2, 3), correction=0)  # (Ns, C)
    std = (var + eps).sqrt()
    return instance_norm(content, std.expand(n, c), mean.expand(n, c), eps)
