"""Normalization modules: InstanceNorm2d, ConditionalInstanceNorm2d, adaptive_instance_norm."""

from __future__ import annotations

import pytest
import torch
from test_ops import reference

from stylize.nn.norm import ConditionalInstanceNorm2d, InstanceNorm2d, adaptive_instance_norm
from stylize.ops import instance_norm


def _randomize(module: torch.nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.rand(p.shape, generator=gen) * 1.5 - 0.25)


@pytest.mark.parametrize("channels_last", [False, True])
def test_instance_norm_state_dict_round_trip_with_torch(channels_last):
    theirs = torch.nn.InstanceNorm2d(6, affine=True)
    _randomize(theirs)
    ours = InstanceNorm2d(6)
    ours.load_state_dict(theirs.state_dict())  # strict: same keys, same shapes
    x = torch.randn(3, 6, 9, 7)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)
    back = torch.nn.InstanceNorm2d(6, affine=True)
    back.load_state_dict(ours.state_dict())
    torch.testing.assert_close(back(x), ours(x), atol=1e-5, rtol=1e-5)


def test_instance_norm_module_relu_and_gradients():
    torch.manual_seed(0)
    ours = InstanceNorm2d(4, activation="relu")
    theirs = torch.nn.InstanceNorm2d(4, affine=True)
    _randomize(ours, 1)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 4, 6, 6, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    y, y2 = ours(x), torch.relu(theirs(x2))
    torch.testing.assert_close(y, y2, atol=1e-5, rtol=1e-5)
    dy = torch.randn_like(y)
    y.backward(dy)
    y2.backward(dy)
    torch.testing.assert_close(x.grad, x2.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours.weight.grad, theirs.weight.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours.bias.grad, theirs.bias.grad, atol=1e-4, rtol=1e-4)
    assert "activation=relu" in repr(ours)


def test_conditional_one_hot_picks_a_style():
    cin = ConditionalInstanceNorm2d(5, num_styles=3)
    _randomize(cin)
    x = torch.randn(3, 5, 8, 8)
    sw = torch.eye(3)  # sample i uses style i
    want = reference(x, cin.scale.detach(), cin.shift.detach())  # (S=N, C) rows per sample
    torch.testing.assert_close(cin(x, sw), want.float(), atol=1e-4, rtol=1e-4)


def test_conditional_blend_equals_blended_scale_and_shift():
    cin = ConditionalInstanceNorm2d(4, num_styles=3, activation="relu")
    _randomize(cin, 2)
    x = torch.randn(2, 4, 7, 5)
    sw = torch.tensor([[0.2, 0.5, 0.3], [0.0, 0.25, 0.75]])
    scale = sw @ cin.scale.detach()  # (N, C)
    shift = sw @ cin.shift.detach()
    want = reference(x, scale, shift, relu=True)
    torch.testing.assert_close(cin(x, sw), want.float(), atol=1e-4, rtol=1e-4)
    # one blend vector (S,) applies to every sample
    torch.testing.assert_close(cin(x, sw[1]), cin(x, sw[1].expand(2, 3)))


def test_conditional_gradients_reach_only_used_styles():
    cin = ConditionalInstanceNorm2d(3, num_styles=4)
    _randomize(cin, 3)
    x = torch.randn(2, 3, 5, 5)
    sw = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 0.5, 0.5, 0.0]])
    cin(x, sw).square().sum().backward()
    assert cin.scale.grad[1].abs().sum() > 0 and cin.shift.grad[2].abs().sum() > 0
    assert not cin.scale.grad[[0, 3]].any() and not cin.shift.grad[[0, 3]].any()


def test_conditional_rejects_wrong_style_weights():
    cin = ConditionalInstanceNorm2d(3, num_styles=4)
    with pytest.raises(ValueError, match=r"\(N, S\)=\(2, 4\)"):
        cin(torch.randn(2, 3, 4, 4), torch.ones(2, 3))
    with pytest.raises(ValueError, match="style_weights"):
        cin(torch.randn(2, 3, 4, 4), torch.ones(3, 4))


@pytest.mark.parametrize("style_batch", [1, 2])
def test_adain_output_statistics_equal_the_styles(style_batch):
    gen = torch.Generator().manual_seed(4)
    content = torch.randn(2, 6, 12, 10, generator=gen) * 3 + 1
    style = torch.randn(style_batch, 6, 7, 9, generator=gen) * 0.5 - 2
    out = adaptive_instance_norm(content, style)
    var, mean = torch.var_mean(style.double(), dim=(2, 3), correction=0)
    ovar, omean = torch.var_mean(out.double(), dim=(2, 3), correction=0)
    torch.testing.assert_close(omean, mean.expand(2, 6), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ovar.sqrt(), var.sqrt().expand(2, 6), atol=1e-4, rtol=1e-4)


def test_adain_is_differentiable_and_validates():
    content = torch.randn(1, 3, 5, 5, requires_grad=True)
    style = torch.randn(1, 3, 4, 4, requires_grad=True)
    adaptive_instance_norm(content, style).square().sum().backward()
    assert content.grad is not None and style.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="do not match"):
        adaptive_instance_norm(content, torch.randn(1, 4, 4, 4))


def test_modules_match_the_function():
    m = InstanceNorm2d(3, eps=1e-3)
    _randomize(m, 5)
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(m(x), instance_norm(x, m.weight, m.bias, 1e-3))


@pytest.mark.filterwarnings("ignore")  # legacy-exporter deprecation and tracer notices
def test_onnx_export_matches_onnxruntime(tmp_path):
    """torch.onnx.export sees plain torch ops (InstanceNormalization + affine + Relu)."""
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = InstanceNorm2d(4, activation="relu")
            self.cin = ConditionalInstanceNorm2d(4, 3)

        def forward(self, x, sw):
            return self.cin(self.norm(x), sw)

    net = Net().eval()
    _randomize(net, 6)
    x = torch.randn(2, 4, 9, 8)
    sw = torch.tensor([[1.0, 0.0, 0.0], [0.2, 0.3, 0.5]])
    path = tmp_path / "norm.onnx"
    torch.onnx.export(net, (x, sw), str(path), dynamo=False, input_names=["x", "sw"])
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {"x": x.numpy(), "sw": sw.numpy()})
    with torch.no_grad():
        want = net(x, sw)
    torch.testing.assert_close(torch.from_numpy(got), want, atol=1e-4, rtol=1e-4)
