"""The transformer network: architecture of both presets, size handling, batching, conditional
norms, and an independent float64 re-implementation of the forward pass."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stylize.errors import StylizeError
from stylize.nn.norm import ConditionalInstanceNorm2d, InstanceNorm2d
from stylize.nn.transformer import PRESETS, NetConfig, TransformerNet, preset


def _net(name: str, styles: int = 1, seed: int = 0) -> TransformerNet:
    torch.manual_seed(seed)
    net = TransformerNet(preset(name, styles)).eval()
    # Random norm affine parameters, so that styles really differ.
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, ConditionalInstanceNorm2d):
                m.scale.copy_(1 + 0.3 * torch.randn_like(m.scale))
                m.shift.copy_(0.3 * torch.randn_like(m.shift))
            elif isinstance(m, InstanceNorm2d):
                m.weight.copy_(1 + 0.3 * torch.randn_like(m.weight))
                m.bias.copy_(0.3 * torch.randn_like(m.bias))
    return net


def _onehot(n: int, s: int, idx: list[int]) -> torch.Tensor:
    return F.one_hot(torch.tensor(idx), s).float().reshape(n, s)


# -- architecture ---------------------------------------------------------------------------


def test_johnson_architecture():
    net = TransformerNet(preset("johnson"))
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert shapes["encoder.0.conv.weight"] == (32, 3, 9, 9)
    assert shapes["encoder.1.conv.weight"] == (64, 32, 3, 3)
    assert shapes["encoder.2.conv.weight"] == (128, 64, 3, 3)
    assert len(net.residuals) == 5
    assert shapes["residuals.4.conv2.conv.weight"] == (128, 128, 3, 3)
    assert shapes["decoder.0.layer.conv.weight"] == (64, 128, 3, 3)
    assert shapes["decoder.1.layer.conv.weight"] == (32, 64, 3, 3)
    assert shapes["head.conv.weight"] == (3, 32, 9, 9)
    assert shapes["head.conv.bias"] == (3,)  # no norm on the head: it has a bias
    assert [m.conv.stride for m in net.encoder] == [(1, 1), (2, 2), (2, 2)]
    assert not net.conditional and net.num_styles == 1
    assert sum(p.numel() for p in net.parameters()) == 1_677_635


def test_magenta_lite_architecture():
    net = TransformerNet(preset("magenta-lite", 26))
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert shapes["encoder.0.conv.weight"] == (32, 3, 9, 9)
    assert shapes["encoder.2.conv.weight"] == (32, 32, 3, 3)
    assert len(net.residuals) == 6
    assert shapes["decoder.0.layer.conv.weight"] == (8, 32, 3, 3)
    assert shapes["decoder.1.layer.conv.weight"] == (4, 8, 3, 3)
    assert shapes["head.conv.weight"] == (3, 4, 9, 9)
    assert shapes["head.norm.scale"] == (26, 3)  # the head is normalized, no bias
    assert not any(k.endswith("conv.bias") for k in shapes)
    assert net.conditional and net.num_styles == 26
    assert sum(p.numel() for p in net.parameters()) == 166_104


@pytest.mark.parametrize("name", PRESETS)
@pytest.mark.parametrize("styles", [1, 3])
def test_building_blocks(name, styles):
    net = TransformerNet(preset(name, styles))
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(c.padding_mode == "reflect" for c in convs)
    assert not any(isinstance(m, (nn.ConvTranspose2d, nn.InstanceNorm2d)) for m in net.modules())
    norm_type = InstanceNorm2d if styles == 1 else ConditionalInstanceNorm2d
    norms = [m for m in net.modules() if isinstance(m, (InstanceNorm2d, ConditionalInstanceNorm2d))]
    assert norms and all(type(m) is norm_type for m in norms)
    # ReLU is fused into every norm except the second of each residual block and the head.
    plain = {id(b.conv2.norm) for b in net.residuals} | {id(net.head.norm)}
    for m in norms:
        assert m.activation == (None if id(m) in plain else "relu")
    assert net.conditional == (styles > 1)


# -- config ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PRESETS)
def test_config_round_trip(name):
    cfg = preset(name, 4)
    d = cfg.to_dict()
    assert json.loads(json.dumps(d)) == d  # plain python types only
    assert NetConfig.from_dict(d) == cfg
    assert NetConfig.from_dict(json.loads(json.dumps(d))) == cfg


def test_config_errors():
    d = preset("johnson").to_dict()
    with pytest.raises(StylizeError, match="unknown keys"):
        NetConfig.from_dict({**d, "colour": 1})
    with pytest.raises(StylizeError, match="missing keys"):
        NetConfig.from_dict({k: v for k, v in d.items() if k != "num_residual"})
    with pytest.raises(StylizeError, match="num_residual has type"):
        NetConfig.from_dict({**d, "num_residual": "5"})
    with pytest.raises(StylizeError, match="expected a dict"):
        NetConfig.from_dict([1, 2])
    with pytest.raises(StylizeError, match="padding must be one of"):
        NetConfig(padding="circular")
    with pytest.raises(StylizeError, match="up_channels needs 2"):
        NetConfig(up_channels=(64,))
    with pytest.raises(StylizeError, match="odd"):
        NetConfig(outer_kernel=8)
    with pytest.raises(StylizeError, match="1 style"):
        NetConfig(norm="instance", num_styles=3)
    with pytest.raises(StylizeError, match="unknown network preset"):
        preset("vgg")
    with pytest.raises(StylizeError, match="integer >= 1"):
        preset("johnson", 0)


def test_preset_norms():
    assert preset("johnson", 1).norm == "instance"
    assert preset("johnson", 5).norm == "conditional" and preset("johnson", 5).num_styles == 5
    assert preset("magenta-lite", 26).norm == "conditional"
    assert preset("magenta-lite", 1).norm == "instance"


# -- sizes, determinism, batching ----------------------------------------------------------


@pytest.mark.parametrize("size", [(1, 1), (2, 3), (5, 7), (17, 33), (8, 8), (64, 20)])
@pytest.mark.parametrize("name", PRESETS)
def test_output_size_and_range(name, size):
    net = _net(name, 3)
    x = torch.rand(2, 3, *size)
    with torch.no_grad():
        y = net(x, _onehot(2, 3, [0, 2]))
    assert y.shape == x.shape
    assert torch.isfinite(y).all() and y.min() >= 0 and y.max() <= 1


def test_large_odd_size():
    net = _net("magenta-lite", 26)
    x = torch.rand(1, 3, 257, 391)
    with torch.no_grad():
        y = net(x, _onehot(1, 26, [5]))
    assert y.shape == (1, 3, 257, 391)


def test_deterministic():
    net = _net("magenta-lite", 26)
    x = torch.rand(1, 3, 45, 61)
    w = _onehot(1, 26, [7])
    with torch.no_grad():
        assert torch.equal(net(x, w), net(x, w))


@pytest.mark.parametrize("name", PRESETS)
def test_batch_equals_single_runs(name):
    net = _net(name, 4)
    x = torch.rand(3, 3, 37, 50)
    w = torch.tensor([[1.0, 0, 0, 0], [0, 0, 1, 0], [0.25, 0.25, 0.0, 0.5]])
    with torch.no_grad():
        batch = net(x, w)
        singles = torch.cat([net(x[i : i + 1], w[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batch, singles, rtol=0, atol=1e-5)


def test_style_weight_broadcast_and_errors():
    net = _net("magenta-lite", 4)
    x = torch.rand(2, 3, 16, 16)
    w = torch.tensor([0.0, 1.0, 0.0, 0.0])
    with torch.no_grad():
        torch.testing.assert_close(net(x, w), net(x, w.expand(2, 4)), rtol=0, atol=0)
        assert not torch.allclose(net(x, w), net(x, torch.tensor([1.0, 0, 0, 0])), atol=1e-3)
    with pytest.raises(ValueError, match="style_weights"):
        net(x)
    with pytest.raises(ValueError, match="style_weights must be"):
        net(x, torch.ones(2, 5))
    with pytest.raises(ValueError, match="style_weights must be"):
        net(x, torch.ones(3, 4))
    with pytest.raises(ValueError, match="expected an image batch"):
        net(torch.rand(2, 1, 16, 16), w)


def test_single_style_ignores_weights():
    net = _net("johnson", 1)
    x = torch.rand(1, 3, 20, 20)
    with torch.no_grad():
        assert torch.equal(net(x), net(x, torch.ones(1, 1)))


def test_blend_equals_blended_norm_parameters():
    """A conditional net with blend weights == an instance-norm net with blended scale/shift."""
    cond = _net("magenta-lite", 3, seed=1)
    plain = TransformerNet(preset("magenta-lite", 1)).eval()
    w = torch.tensor([0.2, 0.0, 0.8])
    state = {}
    for k, v in cond.state_dict().items():
        if k.endswith("norm.scale"):
            state[k.replace("norm.scale", "norm.weight")] = w @ v
        elif k.endswith("norm.shift"):
            state[k.replace("norm.shift", "norm.bias")] = w @ v
        else:
            state[k] = v
    plain.load_state_dict(state)
    x = torch.rand(2, 3, 24, 28)
    with torch.no_grad():
        torch.testing.assert_close(cond(x, w), plain(x), rtol=0, atol=1e-5)


def test_padding_is_reflect_then_crop():
    net = _net("magenta-lite", 2)
    w = torch.tensor([[0.5, 0.5]])
    x = torch.rand(1, 3, 17, 30)  # padded to 20 x 32: rows 1 + 2, columns 1 + 1
    with torch.no_grad():
        y = net(x, w)
        body = net.body(F.pad(x, (1, 1, 1, 2), mode="reflect"), w)
    assert net.padded_size(17, 30) == (20, 32)
    torch.testing.assert_close(y, body[:, :, 1:18, 1:31], rtol=0, atol=0)
    x4 = torch.rand(1, 3, 16, 24)  # already a multiple of the stride: no padding at all
    with torch.no_grad():
        assert torch.equal(net(x4, w), net.body(x4, w))


def test_clamp_output():
    cfg = NetConfig(
        down_channels=(8, 8), up_channels=(8,), num_residual=1, output="clamp", output_norm=False
    )
    net = TransformerNet(cfg).eval()
    with torch.no_grad():
        net.head.conv.bias.fill_(5.0)
        assert torch.equal(net(torch.rand(1, 3, 10, 10)), torch.ones(1, 3, 10, 10))
        net.head.conv.bias.fill_(-5.0)
        assert torch.equal(net(torch.rand(1, 3, 10, 10)), torch.zeros(1, 3, 10, 10))


def test_gradients_reach_every_parameter():
    net = _net("johnson", 2).train()
    x = torch.rand(2, 3, 16, 16)
    net(x, _onehot(2, 2, [0, 1])).mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_bfloat16_runs():
    net = _net("magenta-lite", 2)
    x = torch.rand(1, 3, 20, 20)
    w = torch.tensor([[1.0, 0.0]])
    with torch.no_grad():
        ref = net(x, w)
        low = net.to(torch.bfloat16)(x.bfloat16(), w.bfloat16())
    assert low.dtype == torch.bfloat16 and low.shape == ref.shape
    assert (low.float() - ref).abs().max() < 0.1


# -- independent float64 reference --------------------------------------------------------


def _ref_norm(x, scale, shift, eps, relu):
    mean = x.mean(dim=(2, 3), keepdim=True)
    var = ((x - mean) ** 2).mean(dim=(2, 3), keepdim=True)
    y = (x - mean) / torch.sqrt(var + eps) * scale[:, :, None, None] + shift[:, :, None, None]
    return y.clamp_min(0) if relu else y


def _reference_forward(state: dict, cfg: NetConfig, x, w):
    """The network written out from the architecture description, in float64."""
    s = {k: v.double() for k, v in state.items()}

    def layer(prefix, x, stride=1, relu=True, norm=True):
        wt = s[f"{prefix}.conv.weight"]
        k = wt.shape[-1]
        x = F.conv2d(
            F.pad(x, [k // 2] * 4, mode="reflect"), wt, s.get(f"{prefix}.conv.bias"), stride
        )
        if not norm:
            return x
        if cfg.norm == "conditional":
            scale, shift = w @ s[f"{prefix}.norm.scale"], w @ s[f"{prefix}.norm.shift"]
        else:
            scale = s[f"{prefix}.norm.weight"].expand(x.shape[0], -1)
            shift = s[f"{prefix}.norm.bias"].expand(x.shape[0], -1)
        return _ref_norm(x, scale, shift, cfg.eps, relu)

    for i in range(len(cfg.down_channels)):
        x = layer(f"encoder.{i}", x, stride=1 if i == 0 else cfg.stride)
    for i in range(cfg.num_residual):
        x = x + layer(f"residuals.{i}.conv2", layer(f"residuals.{i}.conv1", x), relu=False)
    for i in range(len(cfg.up_channels)):
        x = x.repeat_interleave(cfg.stride, dim=2).repeat_interleave(cfg.stride, dim=3)
        x = layer(f"decoder.{i}.layer", x)
    x = layer("head", x, relu=False, norm=cfg.output_norm)
    return torch.sigmoid(x)


@pytest.mark.parametrize("name,styles", [("johnson", 1), ("magenta-lite", 3), ("johnson", 2)])
def test_matches_float64_reference(name, styles):
    net = _net(name, styles, seed=3)
    x = torch.rand(2, 3, 24, 32, dtype=torch.float64)
    w = torch.tensor([[0.0, 1.0, 0.0][:styles], [0.5, 0.25, 0.25][:styles]], dtype=torch.float64)
    w = w / w.sum(1, keepdim=True)
    ref = _reference_forward(net.state_dict(), net.config, x, w)
    with torch.no_grad():
        out = net(x.float(), w.float())
    assert (out.double() - ref).abs().max() < 2e-5
