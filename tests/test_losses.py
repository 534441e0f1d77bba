"""Perceptual losses against float64 references written independently (loops / einsum)."""

from __future__ import annotations

import torch

from stylize.nn.vgg import VGGFeatures
from stylize.train.losses import (
    PerceptualLoss,
    content_loss,
    gram_matrix,
    style_loss,
    total_variation,
)

G = torch.Generator().manual_seed(0)


def _gram64(f: torch.Tensor) -> torch.Tensor:
    f = f.double()
    n, c, h, w = f.shape
    return torch.einsum("nchw,ndhw->ncd", f, f) / (c * h * w)


def test_gram_matrix_normalized_by_chw():
    f = torch.randn(2, 5, 7, 3, generator=G)
    got = gram_matrix(f)
    assert got.dtype == torch.float32 and got.shape == (2, 5, 5)
    torch.testing.assert_close(got.double(), _gram64(f), rtol=1e-5, atol=1e-6)
    # entry (0, 1, 2) by hand
    manual = sum(float(f[0, 1, i, j] * f[0, 2, i, j]) for i in range(7) for j in range(3))
    assert abs(float(got[0, 1, 2]) - manual / (5 * 7 * 3)) < 1e-5


def test_gram_matrix_stays_float32_under_autocast():
    f = torch.randn(2, 8, 6, 6, generator=G)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = gram_matrix(f.bfloat16())
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), _gram64(f.bfloat16()), rtol=1e-5, atol=1e-6)


def test_content_loss_is_mse():
    a, b = torch.randn(2, 4, 5, 5, generator=G), torch.randn(2, 4, 5, 5, generator=G)
    expected = ((a.double() - b.double()) ** 2).sum() / a.numel()
    assert abs(float(content_loss(a, b)) - float(expected)) < 1e-5


def test_total_variation_by_loops():
    x = torch.rand(2, 3, 5, 4, generator=G)
    dh = sum(
        float(x[n, c, i + 1, j] - x[n, c, i, j]) ** 2
        for n in range(2)
        for c in range(3)
        for i in range(4)
        for j in range(4)
    ) / (2 * 3 * 4 * 4)
    dw = sum(
        float(x[n, c, i, j + 1] - x[n, c, i, j]) ** 2
        for n in range(2)
        for c in range(3)
        for i in range(5)
        for j in range(3)
    ) / (2 * 3 * 5 * 3)
    assert abs(float(total_variation(x)) - (dh + dw)) < 1e-6
    assert float(total_variation(torch.full((1, 3, 4, 4), 0.3))) == 0.0


def test_style_loss_sums_layers():
    feats = {"a": torch.randn(2, 3, 4, 4, generator=G), "b": torch.randn(2, 6, 2, 2, generator=G)}
    targets = {"a": torch.randn(2, 3, 3, generator=G), "b": torch.randn(2, 6, 6, generator=G)}
    expected = sum(((_gram64(feats[k]) - targets[k].double()) ** 2).mean() for k in feats)
    assert abs(float(style_loss(feats, targets)) - float(expected)) < 1e-5


def test_perceptual_loss_uses_each_samples_style():
    torch.manual_seed(0)
    vgg = VGGFeatures()  # random weights are enough for the bookkeeping
    styles = [torch.rand(1, 3, 24, 20, generator=G), torch.rand(1, 3, 16, 16, generator=G)]
    layers = ("relu1_2", "relu2_2")
    loss = PerceptualLoss(vgg, styles, "relu2_2", layers, 2.0, 3.0, 5.0)
    assert loss.gram_relu1_2.shape == (2, 64, 64)
    out = torch.rand(2, 3, 16, 16, generator=G)
    content = torch.rand(2, 3, 16, 16, generator=G)
    index = torch.tensor([1, 0])
    terms = loss(out, content, index)

    with torch.no_grad():
        fo = vgg(out, layers)
        fc = vgg(content, layers)
        fs = [vgg(s, layers) for s in styles]
    c = ((fo["relu2_2"].double() - fc["relu2_2"].double()) ** 2).mean()
    s = 0.0
    for name in layers:
        g = _gram64(fo[name])
        t = torch.stack([_gram64(fs[int(i)][name])[0] for i in index])
        s = s + ((g - t) ** 2).mean()
    o = out.double()
    tv = ((o[:, :, 1:] - o[:, :, :-1]) ** 2).mean() + ((o[..., 1:] - o[..., :-1]) ** 2).mean()
    torch.testing.assert_close(terms["content"].double(), 2.0 * c, rtol=1e-4, atol=0)
    torch.testing.assert_close(terms["style"].double(), 3.0 * s, rtol=1e-4, atol=0)
    torch.testing.assert_close(terms["tv"].double(), 5.0 * tv, rtol=1e-5, atol=0)
    total = terms["content"] + terms["style"] + terms["tv"]
    torch.testing.assert_close(terms["total"], total)
    # swapping the styles changes the style term (the index is really used)
    swapped = loss(out, content, index.flip(0))
    assert abs(float(swapped["style"]) - float(terms["style"])) > 1e-3 * float(terms["style"])
