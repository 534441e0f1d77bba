"""The VGG16 loss network: torchvision-compatible layers, weight files, the offline error."""

from __future__ import annotations

import urllib.error

import pytest
import torch
import torchvision
from train_support import vgg_weights_file

from stylize.errors import StylizeError
from stylize.nn import vgg as vgg_mod
from stylize.nn.vgg import LAYERS, VGGFeatures, check_layers, load_vgg, load_vgg16_state_dict


@pytest.fixture(scope="session")
def vgg_file(tmp_path_factory):
    return vgg_weights_file(tmp_path_factory.getbasetemp())


def test_features_match_torchvision_vgg16(vgg_file):
    """Our layers + normalization == torchvision's vgg16().features on Normalize'd input."""
    reference = torchvision.models.vgg16(weights=None).features
    state = torch.load(vgg_file, weights_only=True)
    reference.load_state_dict({k.removeprefix("features."): v for k, v in state.items()})
    reference.eval()
    ours = load_vgg(vgg_file)
    x = torch.rand(2, 3, 40, 36, generator=torch.Generator().manual_seed(0))
    normalize = torchvision.transforms.Normalize(
        mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]
    )
    with torch.no_grad():
        got = ours(x, tuple(LAYERS))
        h = normalize(x)
        expected = {}
        for i, layer in enumerate(reference):
            h = layer(h)
            for name, idx in LAYERS.items():
                if idx == i:
                    expected[name] = h.clone()
    assert set(got) == set(LAYERS)
    for name in LAYERS:
        assert got[name].shape == expected[name].shape, name
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-5)
    assert got["relu4_3"].shape == (2, 512, 5, 4)


def test_full_torchvision_state_dict_is_accepted(vgg_file, tmp_path):
    """A file as torchvision saves it (features.* plus classifier.*) loads the same weights."""
    state = torch.load(vgg_file, weights_only=True)
    full = dict(state)
    full["classifier.0.weight"] = torch.zeros(4, 4)  # extra keys are ignored
    full["classifier.6.bias"] = torch.zeros(10)
    path = tmp_path / "vgg16-397923af.pth"
    torch.save(full, path)
    loaded = load_vgg16_state_dict(path)
    assert set(loaded) == {k.removeprefix("features.") for k in state if int(k.split(".")[1]) < 23}
    torch.testing.assert_close(loaded["0.weight"], state["features.0.weight"])
    torch.testing.assert_close(loaded["21.bias"], state["features.21.bias"])


def test_loss_network_is_frozen_but_passes_gradients(vgg_file):
    net = load_vgg(vgg_file)
    net.train()
    assert not net.training
    assert not any(p.requires_grad for p in net.parameters())
    x = torch.rand(1, 3, 32, 32, requires_grad=True)
    net(x, ("relu2_2",))["relu2_2"].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_only_as_deep_as_needed():
    net = VGGFeatures()
    out = net(torch.rand(1, 3, 16, 16), ("relu1_2",))
    assert list(out) == ["relu1_2"] and out["relu1_2"].shape == (1, 64, 16, 16)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"not a torch file at all", "cannot read it"),
        ("vgg19", "has shape"),
        ("missing", "no VGG16 weight"),
    ],
)
def test_bad_weight_files_are_clear_errors(tmp_path, content, message):
    path = tmp_path / "weights.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "vgg19":  # right keys, wrong shapes (e.g. another network)
        state = {k: torch.zeros(1) for k in VGGFeatures().features.state_dict()}
        torch.save(state, path)
    else:
        torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, path)
    with pytest.raises(StylizeError, match=message) as info:
        load_vgg16_state_dict(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_missing_file():
    with pytest.raises(StylizeError, match="--vgg-weights .*no such file"):
        load_vgg16_state_dict("/nonexistent/vgg.pth")


def test_check_layers():
    assert check_layers(["relu1_2", " relu4_3"]) == ("relu1_2", "relu4_3")
    with pytest.raises(StylizeError, match="--style-layers: unknown VGG16 layer.*relu9_9"):
        check_layers(["relu9_9"])


def test_offline_without_weights_is_one_clear_error(tmp_path, monkeypatch):
    """No cache (empty TORCH_HOME) and the download fails (simulated: no network is touched)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    calls = []

    def no_network(url, dst, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(StylizeError) as info:
        load_vgg(None)
    message = str(info.value)
    assert calls == [vgg_mod.WEIGHTS_URL]  # it did try torchvision's standard weights
    assert "--vgg-weights" in message and vgg_mod.WEIGHTS_URL in message
    assert "name resolution" in message and "\n" not in message
    assert str(tmp_path / "torch_home") in message  # where the cache would be
    assert not list((tmp_path / "torch_home").rglob("*.pth"))


def test_cached_torchvision_weights_are_used(tmp_path, monkeypatch, vgg_file):
    """With the file in the torch hub cache, no download is attempted."""
    cache = tmp_path / "torch_home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    (cache / vgg_mod.WEIGHTS_FILE).write_bytes(vgg_file.read_bytes())
    # check_hash would reject our random weights, so only the hash check is relaxed here.
    original = torch.hub.load_state_dict_from_url

    def no_hash(url, *args, **kwargs):
        kwargs["check_hash"] = False
        return original(url, *args, **kwargs)

    def no_network(*args, **kwargs):
        raise AssertionError("must not download")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", no_hash)
    net = load_vgg(None)
    expected = torch.load(vgg_file, weights_only=True)["features.0.weight"]
    torch.testing.assert_close(net.features[0].weight, expected)
