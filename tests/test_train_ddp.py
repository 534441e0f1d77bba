"""Distributed training: `torchrun --nproc-per-node 2 -m stylize train` with gloo on the CPU
follows a single-process run with the same global batch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch
from train_support import make_photos, make_style, read_log, vgg_weights_file

from stylize.checkpoint import load_model
from stylize.train import TrainConfig, train
from stylize.train.checkpoint import load_checkpoint


@pytest.fixture(scope="session")
def vgg_file(tmp_path_factory):
    return vgg_weights_file(tmp_path_factory.getbasetemp())


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path, vgg_file):
    data = make_photos(tmp_path / "photos", 6)
    styles = [make_style(tmp_path / "red.png", 0), make_style(tmp_path / "blue.png", 1)]
    common = dict(
        data=str(data),
        styles=[str(s) for s in styles],
        steps=3,
        batch_size=4,
        image_size=32,
        workers=0,
        device="cpu",
        vgg_weights=str(vgg_file),
        checkpoint_every=2,
        progress=False,
    )
    single = TrainConfig(output=str(tmp_path / "one" / "m.pth"), log=str(tmp_path / "one.jsonl"),
                         **common)  # fmt: skip
    train(single, warn=lambda m: None)

    out = tmp_path / "two"
    args = [
        "train", "--data", str(data), "--style", str(styles[0]), "--style", str(styles[1]),
        "-o", str(out / "m.pth"), "--steps", "3", "--batch-size", "4", "--image-size", "32",
        "--workers", "0", "--device", "cpu", "--vgg-weights", str(vgg_file),
        "--checkpoint-every", "2", "--log-file", str(out / "log.jsonl"), "--no-progress",
    ]  # fmt: skip
    launcher = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
        "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
        "-m", "stylize",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "STYLIZE_DEBUG": "1"}
    proc = subprocess.run(
        [*launcher, *args], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr.count("wrote ") == 1  # only rank 0 reports and writes the model

    two, one = read_log(out / "log.jsonl"), read_log(single.log)
    assert [r["step"] for r in two] == [1, 2, 3]  # one log, written once (rank 0)
    for a, b in zip(two, one, strict=True):
        for key in ("content", "style", "tv", "total"):
            assert a[key] == pytest.approx(b[key], rel=1e-4), (a["step"], key)
    state = load_checkpoint(out / "m.pth.ckpt")
    assert state["step"] == 3 and state["world_size"] == 2
    model = load_model(out / "m.pth")
    assert model.metadata["world_size"] == 2
    # Outputs, not raw weights: Adam turns float noise in the (mathematically zero) gradients
    # of norm shifts that a following instance norm cancels into full-size, harmless updates.
    photo = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    weights = torch.eye(2)
    with torch.no_grad():
        got = model.net(photo, weights)
        expected = load_model(single.output).net(photo, weights)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-3)  # the losses above: 1e-4
    leftovers = sorted(p.name for p in out.iterdir())
    assert leftovers == ["log.jsonl", "m.pth", "m.pth.ckpt"]
