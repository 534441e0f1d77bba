"""The Stylizer API: input kinds, sizes, strength, preserve-colour, alpha, styles, tiles."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from stylize.checkpoint import save_model
from stylize.errors import StylizeError
from stylize.nn.transformer import NetConfig, TransformerNet
from stylize.stylizer import Stylizer, transfer_luminance

TINY = NetConfig(
    down_channels=(8, 8, 8),
    up_channels=(8, 8),
    num_residual=1,
    norm="conditional",
    num_styles=3,
)


def tiny_net(seed: int = 0) -> TransformerNet:
    torch.manual_seed(seed)
    net = TransformerNet(TINY)
    with torch.no_grad():  # random norms so that styles differ visibly
        for p in net.parameters():
            if p.dim() == 2:
                p.normal_(1.0, 0.5)
    return net.eval()


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_model(path, tiny_net(), style_names=["ink", "fire", "sea"])
    return path


@pytest.fixture(scope="module")
def st(model_file):
    return Stylizer(model_file, device="cpu")


def photo(w: int = 24, h: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_every_input_kind_gives_the_same_pixels(st, tmp_path):
    arr = photo()
    path = tmp_path / "p.png"
    Image.fromarray(arr).save(path)
    ref = np.asarray(st.stylize(arr, style=1))
    assert ref.shape == arr.shape and ref.dtype == np.uint8
    for image in (
        path,
        str(path),
        Image.fromarray(arr),
        torch.from_numpy(arr),
        torch.from_numpy(arr).permute(2, 0, 1).float() / 255,
        (torch.from_numpy(arr).permute(2, 0, 1).float() / 255)[None],
    ):
        assert np.array_equal(np.asarray(st.stylize(image, style=1)), ref), type(image)


@pytest.mark.parametrize("size", [(1, 1), (3, 5), (1, 40), (37, 2), (13, 29)])
def test_output_size_equals_input_size(st, size):
    w, h = size
    out = st.stylize(photo(w, h), style=0)
    assert out.size == (w, h) and out.mode == "RGB"


def test_strength_zero_returns_the_input_and_half_is_the_midpoint(st):
    arr = photo(32, 20, seed=3)
    assert np.array_equal(np.asarray(st.stylize(arr, strength=0.0)), arr)
    full = np.asarray(st.stylize(arr, style=2), dtype=np.float64)
    half = np.asarray(st.stylize(arr, style=2, strength=0.5), dtype=np.float64)
    assert np.abs(half - (full + arr) / 2).max() <= 1.0
    assert np.abs(full - arr).mean() > 5  # the network does change the picture


def _ycbcr(rgb: np.ndarray) -> np.ndarray:
    """Independent float64 BT.601 full-range RGB -> YCbCr (JPEG's), values 0..255."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    y = 0.299 * r + 0.587 * g + 0.114 * b
    return np.stack([y, 128 + (b - y) / 1.772, 128 + (r - y) / 1.402], axis=-1)


def test_preserve_color_keeps_chroma_and_takes_luma(st):
    rng = np.random.default_rng(5)
    arr = rng.integers(60, 196, (20, 30, 3), dtype=np.uint8)  # mid-tones: no clamping
    styl = np.asarray(st.stylize(arr, style=1))
    kept = np.asarray(st.stylize(arr, style=1, preserve_color=True))
    ours, src, sty = _ycbcr(kept), _ycbcr(arr), _ycbcr(styl)
    unclamped = (kept > 0).all(-1) & (kept < 255).all(-1)
    assert unclamped.mean() > 0.5
    assert np.abs(ours[..., 1:] - src[..., 1:])[unclamped].max() <= 1.5
    assert np.abs(ours[..., 0] - sty[..., 0])[unclamped].max() <= 1.5
    # Against a full float64 YCbCr -> RGB reconstruction.
    y, cb, cr = sty[..., 0], src[..., 1] - 128, src[..., 2] - 128
    r, b = y + 1.402 * cr, y + 1.772 * cb
    g = (y - 0.299 * r - 0.114 * b) / 0.587
    ref = np.clip(np.rint(np.stack([r, g, b], -1)), 0, 255)
    assert np.abs(ref - kept)[unclamped].max() <= 2


def test_transfer_luminance_is_exact_in_float():
    torch.manual_seed(0)
    a, b = torch.rand(2, 3, 5, 7, dtype=torch.float64), torch.rand(2, 3, 5, 7, dtype=torch.float64)
    out = transfer_luminance(a, b * 0.5 + 0.25)
    luma = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64).view(1, 3, 1, 1)
    inside = ((out > 0) & (out < 1)).all(1)
    dy = ((out - a) * luma).sum(1)  # (N, H, W): luma difference to the stylized image
    torch.testing.assert_close(dy[inside], torch.zeros_like(dy)[inside])


def test_alpha_is_reattached(st):
    rgba = Image.fromarray(photo()).convert("RGBA")
    alpha = Image.fromarray(np.tile(np.arange(24, dtype=np.uint8) * 10, (16, 1)))
    rgba.putalpha(alpha)
    out = st.stylize(rgba)
    assert out.mode == "RGBA" and np.array_equal(np.asarray(out)[..., 3], np.asarray(alpha))


def test_styles_names_blends_and_errors(st):
    arr = photo()
    by_index = np.asarray(st.stylize(arr, style=1))
    assert np.array_equal(np.asarray(st.stylize(arr, style="fire")), by_index)
    assert not np.array_equal(np.asarray(st.stylize(arr, style=0)), by_index)
    blend = st.stylize(arr, style="0:0.5,1:0.5")
    assert np.array_equal(np.asarray(st.stylize(arr, style={"ink": 1, 1: 1})), np.asarray(blend))
    with pytest.raises(StylizeError, match="0-2"):
        st.stylize(arr, style=3)
    with pytest.raises(StylizeError, match="strength"):
        st.stylize(arr, strength=1.5)


def test_bad_image_arguments(st):
    with pytest.raises(StylizeError, match="uint8"):
        st.stylize(np.zeros((4, 4, 3), dtype=np.float32))
    with pytest.raises(StylizeError, match="cannot stylize"):
        st.stylize(42)
    with pytest.raises(StylizeError, match="no such file"):
        st.stylize("/nonexistent/photo.jpg")


def test_network_object_and_batches_agree(model_file):
    st_net = Stylizer(tiny_net(), device="cpu")
    st_file = Stylizer(model_file, device="cpu")
    arr = photo(20, 12)
    assert np.array_equal(
        np.asarray(st_net.stylize(arr, style=2)), np.asarray(st_file.stylize(arr, style=2))
    )
    batch = torch.stack([torch.from_numpy(photo(20, 12, seed=s)) for s in range(3)])
    w = st_file.style_vector(2)
    together = st_file.stylize_pixels(batch, w)
    for i in range(3):
        alone = st_file.stylize_pixels(batch[i : i + 1], w)[0]
        assert (together[i].int() - alone.int()).abs().max() <= 1


def test_large_images_go_through_tiles(model_file):
    from stylize.tiling import run_tiled

    arr = photo(150, 90, seed=7)
    st_big = Stylizer(model_file, device="cpu", tile_size=256)
    st_tiles = Stylizer(model_file, device="cpu", tile_size=64)
    whole = np.asarray(st_big.stylize(arr, style=1))
    tiled = np.asarray(st_tiles.stylize(arr, style=1))
    assert tiled.shape == whole.shape and not np.array_equal(tiled, whole)
    # The same as blending the network's tiles by hand.
    net, w = tiny_net(), st_tiles.style_vector(1)[None]
    x = torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        ref = run_tiled(lambda t: net(t, w), x, tile=64, align=4)
        direct = net(x, w)
    ref8 = ref[0].permute(1, 2, 0).mul(255).round().numpy()
    assert np.abs(ref8 - tiled).max() <= 1
    assert np.abs(direct[0].permute(1, 2, 0).mul(255).round().numpy() - whole).max() <= 1


def test_precision_and_device_errors(model_file):
    with pytest.raises(StylizeError, match="fp16"):
        Stylizer(model_file, device="cpu", precision="fp16")
    if not torch.cuda.is_available():
        with pytest.raises(StylizeError, match="CUDA"):
            Stylizer(model_file, device="cuda")
    bf = Stylizer(model_file, device="cpu", precision="bf16")
    assert bf.precision == "bf16" and bf.stylize(photo(), style=0).size == (24, 16)


@pytest.mark.shared
def test_bundled_model_matches_onnxruntime_reference():
    """The whole Stylizer path (uint8 -> network -> uint8) against onnxruntime on the ONNX file."""
    from pathlib import Path

    onnx_path = Path(__file__).resolve().parents[2] / "shared" / "models" / "multistyle26.onnx"
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    if not onnx_path.exists():
        pytest.skip(f"{onnx_path} is absent (../shared reference data)")
    st = Stylizer(device="cpu")  # bundled default model
    arr = photo(64, 48, seed=11)
    ours = np.asarray(st.stylize(arr, style="3:0.5,12:0.5"), np.int16)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    x = (arr.astype(np.float32) / 255).transpose(2, 0, 1)[None]
    w = np.zeros(26, np.float32)
    w[3] = w[12] = 0.5
    ref = sess.run(None, {"image": x, "style_weights": w})[0][0].transpose(1, 2, 0)
    ref = np.clip(np.rint(ref * 255), 0, 255).astype(np.int16)
    assert np.abs(ours - ref).max() <= 2
