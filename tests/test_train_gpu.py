"""Training on a CUDA device: mixed precision, channels_last, compile, exact resume.

Skipped without a CUDA device (run on a GPU machine: `pytest -m gpu tests/test_train_gpu.py`).
"""

from __future__ import annotations

import pytest
import torch
from train_support import make_photos, make_style, read_log, vgg_weights_file

from stylize.checkpoint import load_model
from stylize.train import TrainConfig, train

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu_train")
    return {
        "data": make_photos(root / "photos", 8),
        "styles": [make_style(root / "red.png", 0), make_style(root / "blue.png", 1)],
        "vgg": vgg_weights_file(tmp_path_factory.getbasetemp()),
    }


def _config(tmp, inputs, **overrides) -> TrainConfig:
    settings = dict(
        data=str(inputs["data"]),
        styles=[str(s) for s in inputs["styles"]],
        output=str(tmp / "m.pth"),
        steps=8,
        batch_size=4,
        image_size=64,
        workers=0,
        device="cuda",
        vgg_weights=str(inputs["vgg"]),
        log=str(tmp / "log.jsonl"),
        progress=False,
    )
    settings.update(overrides)
    return TrainConfig(**settings)


@pytest.mark.parametrize(
    "precision, channels_last, compile_",
    [("fp32", False, False), ("bf16", True, False), ("fp16", True, False), ("bf16", True, True)],
)
def test_mixed_precision_variants_train(tmp_path, inputs, precision, channels_last, compile_):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("no bf16 on this GPU")
    cfg = _config(
        tmp_path, inputs, precision=precision, channels_last=channels_last, compile=compile_
    )
    result = train(cfg, warn=lambda m: None)
    assert result.step == 8
    log = read_log(cfg.log)
    assert all(r["total"] == r["total"] and r["total"] < float("inf") for r in log)
    model = load_model(cfg.output)
    assert all(t.dtype == torch.float32 for t in model.net.state_dict().values())


def test_resume_on_gpu_matches(tmp_path, inputs):
    """fp32 on CUDA: resuming reproduces the uninterrupted losses (up to cuDNN's algorithm
    choices, which may differ between runs)."""
    ref = _config(tmp_path / "ref", inputs, precision="fp32", steps=6)
    train(ref, warn=lambda m: None)
    first = _config(tmp_path / "run", inputs, precision="fp32", steps=3, checkpoint_every=3)
    train(first, warn=lambda m: None)
    resume = str(first.checkpoint_path)
    rest = _config(tmp_path / "run", inputs, precision="fp32", steps=6, resume=resume)
    train(rest, warn=lambda m: None)
    for a, b in zip(read_log(rest.log), read_log(ref.log), strict=True):
        assert a["total"] == pytest.approx(b["total"], rel=1e-3)
