"""The CPU inference fast path of TransformerNet (channels_last, no autograd) computes the same
function as the plain path: hand-written reflection pad, space-to-depth head convolution,
in-place residual sums."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from stylize.nn.transformer import (
    TransformerNet,
    preset,
    reflect_pad_nhwc,
    space_to_depth_weight,
)


@pytest.mark.parametrize("shape,p", [((1, 4, 9, 13), 4), ((2, 3, 5, 6), 1), ((1, 32, 8, 8), 4)])
def test_reflect_pad_nhwc_is_bitwise_f_pad(shape, p):
    x = torch.randn(shape).contiguous(memory_format=torch.channels_last)
    ours = reflect_pad_nhwc(x, p)
    assert ours.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(ours, F.pad(x, (p, p, p, p), mode="reflect"))


@pytest.mark.parametrize("k", [3, 5, 9])
def test_space_to_depth_conv_equals_conv(k):
    torch.manual_seed(0)
    w = torch.randn(3, 4, k, k, dtype=torch.float64)
    x = torch.randn(2, 4, 20 + k - 1 + (k % 2), 14 + k - 1 + (k % 2), dtype=torch.float64)
    x = x[:, :, : x.shape[2] // 2 * 2, : x.shape[3] // 2 * 2]  # even padded size
    ref = F.conv2d(x, w)
    s2d = F.pixel_shuffle(F.conv2d(F.pixel_unshuffle(x, 2), space_to_depth_weight(w)), 2)
    s2d = s2d[:, :, : ref.shape[2], : ref.shape[3]]
    torch.testing.assert_close(s2d, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name,styles", [("johnson", 1), ("magenta-lite", 3)])
@pytest.mark.parametrize("size", [(32, 32), (37, 50), (64, 24)])
def test_fast_path_matches_plain_path(name, styles, size):
    torch.manual_seed(1)
    net = TransformerNet(preset(name, styles)).eval()
    with torch.no_grad():  # non-trivial norm parameters, so every layer matters
        for prm in net.parameters():
            prm.add_(0.1 * torch.randn_like(prm))
    x = torch.rand(2, 3, *size)
    sw = torch.softmax(torch.randn(2, styles), dim=1) if styles > 1 else None
    plain = net(x, sw)  # autograd on: the plain path
    with torch.inference_mode():
        fast = net(x.contiguous(memory_format=torch.channels_last), sw)
    torch.testing.assert_close(fast, plain.detach(), rtol=0, atol=2e-5)
