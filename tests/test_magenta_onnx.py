"""The bundled magenta26 model against the ONNX file it came from, run by onnxruntime.

Needs ../shared/models/multistyle26.onnx and onnxruntime (skips with the reason otherwise).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stylize.checkpoint import load_model
from stylize.nn.transformer import preset

pytestmark = pytest.mark.shared

ROOT = Path(__file__).resolve().parents[1]
ONNX_PATH = ROOT.parent / "shared" / "models" / "multistyle26.onnx"
TOL = 1e-4  # max abs difference on [0, 1] outputs, float32

if not ONNX_PATH.is_file():
    pytest.skip(f"reference ONNX model {ONNX_PATH} is absent", allow_module_level=True)
ort = pytest.importorskip(
    "onnxruntime", reason="onnxruntime is not installed (pip install -e '.[dev]')"
)


def _load_script():
    name = "import_magenta_onnx"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, ROOT / "scripts" / "import_magenta_onnx.py"
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="module")
def session():
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    return ort.InferenceSession(str(ONNX_PATH), opts, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def net():
    return load_model("magenta26").net


def _onnx(session, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    (y,) = session.run(None, {"image": x.numpy(), "style_weights": w.numpy()})
    return torch.from_numpy(y)


def _image(h: int, w: int, seed: int) -> torch.Tensor:
    """A smooth photo-like image plus noise, in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    base = F.interpolate(torch.rand(1, 3, 6, 6, generator=g), size=(h, w), mode="bicubic")
    return (base + 0.15 * torch.rand(1, 3, h, w, generator=g)).clamp(0, 1)


def _w(spec: dict[int, float]) -> torch.Tensor:
    w = torch.zeros(26)
    for i, v in spec.items():
        w[i] = v
    return w


STYLES = {
    "style0": _w({0: 1.0}),
    "style7": _w({7: 1.0}),
    "style25": _w({25: 1.0}),
    "blend3-12": _w({3: 0.5, 12: 0.5}),
    "blend3": _w({1: 0.2, 9: 0.3, 20: 0.5}),
}


@pytest.mark.parametrize("style", ["style0", "style25", "blend3-12"])
def test_512x512_matches_onnxruntime(session, net, style):
    x, w = _image(512, 512, 1), STYLES[style]
    ref = _onnx(session, x, w)
    with torch.no_grad():
        out = net(x, w[None])
    assert out.shape == ref.shape == (1, 3, 512, 512)
    assert (out - ref).abs().max().item() <= TOL


@pytest.mark.parametrize("style", list(STYLES))
def test_odd_size_layers_match_onnxruntime(session, net, style):
    """At 257x391 the ONNX graph itself outputs 260x392; our layers (body) must match it."""
    x, w = _image(257, 391, 2), STYLES[style]
    ref = _onnx(session, x, w)
    with torch.no_grad():
        out = net.body(x, w[None])
    assert ref.shape == out.shape == (1, 3, 260, 392)
    assert (out - ref).abs().max().item() <= TOL


@pytest.mark.parametrize("size", [(257, 391), (17, 33), (5, 3)])
def test_odd_size_forward_matches_onnxruntime_on_padded_input(session, net, size):
    """forward() pads (reflect, centred) to a multiple of 4 and crops back to the input size."""
    h, w_ = size
    x, w = _image(h, w_, 3), STYLES["blend3"]
    hp, wp = net.padded_size(h, w_)
    top, left = (hp - h) // 2, (wp - w_) // 2
    pads = (left, wp - w_ - left, top, hp - h - top)
    mode = "reflect" if max(pads[:2]) < w_ and max(pads[2:]) < h else "replicate"
    ref = _onnx(session, F.pad(x, pads, mode=mode), w)[:, :, top : top + h, left : left + w_]
    with torch.no_grad():
        out = net(x, w[None])
    assert out.shape == (1, 3, h, w_)
    assert (out - ref).abs().max().item() <= TOL


def test_batch_of_styles_matches_single_onnx_runs(session, net):
    names = ["style0", "style7", "blend3-12"]
    x = torch.cat([_image(64, 96, s) for s in range(3)])
    w = torch.stack([STYLES[n] for n in names])
    with torch.no_grad():
        out = net(x, w)
    for i in range(3):
        ref = _onnx(session, x[i : i + 1], w[i])
        assert (out[i : i + 1] - ref).abs().max().item() <= TOL


def test_styles_differ(net):
    x = _image(64, 64, 4)
    with torch.no_grad():
        a, b = net(x, STYLES["style0"][None]), net(x, STYLES["style25"][None])
    assert (a - b).abs().mean() > 0.02  # the 26 styles are really different weights


# -- the importer --------------------------------------------------------------------------


def test_importer_reproduces_bundled_model():
    script = _load_script()
    net, metadata = script.import_onnx(ONNX_PATH)
    bundled = load_model("magenta26")
    assert net.config == preset("magenta-lite", 26) == bundled.net.config
    mine, theirs = net.state_dict(), bundled.net.state_dict()
    assert mine.keys() == theirs.keys()
    for k in mine:
        assert torch.equal(mine[k], theirs[k]), k
    for key in ("preset", "source", "license", "imported_sha256"):
        assert metadata[key] == bundled.metadata[key], key


def test_importer_copies_every_initializer_once():
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(ONNX_PATH))
    arrays = sorted(
        (numpy_helper.to_array(t).astype(np.float32).ravel() for t in model.graph.initializer),
        key=lambda a: (a.size, a.tobytes()),
    )
    ours = sorted(
        (v.numpy().ravel() for v in load_model("magenta26").net.state_dict().values()),
        key=lambda a: (a.size, a.tobytes()),
    )
    assert len(arrays) == len(ours) == 3 * 18  # 18 conv layers: weight, gamma, beta
    assert all(np.array_equal(a, b) for a, b in zip(arrays, ours, strict=True))


def _mutated(tmp_path, change) -> Path:
    import onnx

    model = onnx.load(str(ONNX_PATH))
    change(model.graph)
    path = tmp_path / "mutated.onnx"
    onnx.save(model, str(path))
    return path


def _set_attr(graph, op, name, value):
    node = next(n for n in graph.node if n.op_type == op)
    attr = next(a for a in node.attribute if a.name == name)
    attr.s = value


@pytest.mark.parametrize(
    "op,attr,value,message",
    [
        ("Pad", "mode", b"edge", "reflection Pad"),
        ("Resize", "mode", b"linear", "unsupported Resize"),
    ],
)
def test_importer_refuses_other_graphs(tmp_path, op, attr, value, message):
    script = _load_script()
    path = _mutated(tmp_path, lambda g: _set_attr(g, op, attr, value))
    with pytest.raises(script.GraphError, match=message):
        script.import_onnx(path)


def test_importer_refuses_input_scaling(tmp_path):
    """A graph that rescales the image (e.g. to 0-255) before the first layer is refused."""
    import onnx
    from onnx import helper

    def scale_input(graph):
        first_pad = next(n for n in graph.node if n.op_type == "Pad")
        graph.initializer.append(onnx.numpy_helper.from_array(np.array(255.0, np.float32), "k255"))
        graph.node.insert(0, helper.make_node("Mul", ["image", "k255"], ["image_255"]))
        first_pad.input[0] = "image_255"

    script = _load_script()
    with pytest.raises(script.GraphError):
        script.import_onnx(_mutated(tmp_path, scale_input))


def test_importer_cli(tmp_path, capsys):
    script = _load_script()
    out = tmp_path / "m.pt"
    assert script.main([str(ONNX_PATH), str(out)]) == 0
    assert "26 styles" in capsys.readouterr().out
    assert load_model(out).net.config == preset("magenta-lite", 26)
    # Reproducible: the committed file holds exactly what the script writes (the bytes also
    # match when torch's serializer is the same version).
    written = torch.load(out, weights_only=True)
    committed = torch.load(ROOT / "models" / "magenta26.pt", weights_only=True)
    assert written.keys() == committed.keys()
    for key in written:
        if key != "state_dict":
            assert written[key] == committed[key], key
    assert written["sha256"] == committed["sha256"]  # digest of names, shapes and weight bytes
    assert script.main([str(tmp_path / "none.onnx"), str(tmp_path / "x.pt")]) == 1
    assert not (tmp_path / "x.pt").exists()
