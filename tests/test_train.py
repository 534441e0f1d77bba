"""`stylize train` end to end on tiny inputs (CPU, random VGG weights, 32x32 crops)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from train_support import make_photo, make_photos, make_style, read_log, vgg_weights_file
from typer.testing import CliRunner

from stylize.checkpoint import load_model
from stylize.cli import app
from stylize.errors import StylizeError
from stylize.train import TrainConfig, train
from stylize.train import losses as losses_mod
from stylize.train.checkpoint import load_checkpoint

runner = CliRunner()


@pytest.fixture(scope="session")
def vgg_file(tmp_path_factory):
    return vgg_weights_file(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_inputs")
    data = make_photos(root / "photos", 6)
    (data / "notes.txt").write_text("not a photo")
    (data / "more" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 garbage")
    styles = [make_style(root / "red_stripes.png", 0), make_style(root / "blue_checks.png", 1)]
    return {"data": data, "styles": styles}


def config(tmp: Path, inputs, vgg_file, styles=1, **overrides) -> TrainConfig:
    settings = dict(
        data=str(inputs["data"]),
        styles=[str(s) for s in inputs["styles"][:styles]],
        output=str(tmp / "model.pth"),
        steps=6,
        batch_size=2,
        image_size=32,
        workers=0,
        vgg_weights=str(vgg_file),
        log=str(tmp / "log.jsonl"),
        progress=False,
    )
    settings.update(overrides)
    return TrainConfig(**settings)


def _quiet(message: str) -> None:
    pass


def test_loss_decreases_and_model_loads(tmp_path, inputs, vgg_file):
    cfg = config(tmp_path, inputs, vgg_file, steps=16)
    warnings: list[str] = []
    result = train(cfg, warn=warnings.append)
    assert result.interrupted is None and result.step == 16
    assert result.skipped_files == 2
    assert len(warnings) == 1 and "skipped 2 unreadable or non-image files" in warnings[0]
    log = read_log(cfg.log)
    assert [r["step"] for r in log] == list(range(1, 17))
    assert all(r["lr"] == 1e-3 and r["images_per_s"] > 0 for r in log)
    for r in log:
        assert abs(r["total"] - (r["content"] + r["style"] + r["tv"])) <= 1e-3 * r["total"]
    first = sum(r["total"] for r in log[:4]) / 4
    last = sum(r["total"] for r in log[-4:]) / 4
    assert last < 0.6 * first, (first, last)

    model = load_model(cfg.output)
    assert model.net.num_styles == 1 and not model.net.conditional
    assert model.style_names == ["red_stripes"]
    training = model.metadata["training"]
    assert training["preset"] == "johnson" and training["steps"] == 16
    assert training["image_size"] == 32 and training["style_layers"][-1] == "relu4_3"
    assert model.metadata["steps"] == 16
    x = torch.rand(1, 3, 37, 29)
    with torch.no_grad():
        y = model.net(x)
    assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1


def test_multi_style_model_differs_per_style(tmp_path, inputs, vgg_file):
    cfg = config(tmp_path, inputs, vgg_file, styles=2, steps=10, preview_every=5)
    result = train(cfg, warn=_quiet)
    assert result.step == 10
    model = load_model(cfg.output)
    assert model.net.conditional and model.net.num_styles == 2
    assert model.style_names == ["red_stripes", "blue_checks"]
    photo = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        outs = [model.net(photo, torch.eye(2)[i : i + 1]) for i in range(2)]
    # the conditional norms start identical: any difference is what training gave each style
    assert float((outs[0] - outs[1]).abs().mean()) > 1e-3
    # red stripes pull the image towards red, blue/yellow checks towards blue
    assert float(outs[0][:, 0].mean() - outs[1][:, 0].mean()) > 0
    # the preview grid: one row of photos plus one row per style, 4 photos wide
    from PIL import Image

    with Image.open(cfg.preview_path) as img:
        assert img.size == (2 + 4 * 34, 2 + 3 * 34)


def test_exact_resume_after_a_real_interrupt(tmp_path, inputs, vgg_file):
    """SIGINT during step 3 -> checkpoint at step 3; resuming gives the uninterrupted losses."""
    reference = config(tmp_path / "ref", inputs, vgg_file, styles=2)
    train(reference, warn=_quiet)
    expected = read_log(reference.log)

    run = config(tmp_path / "run", inputs, vgg_file, styles=2)

    def interrupt(step, losses):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)  # handled: finishes the step, then stops

    result = train(run, warn=_quiet, on_step=interrupt)
    assert result.interrupted == "SIGINT" and result.step == 3
    assert result.output is None and not Path(run.output).exists()
    assert result.checkpoint == run.checkpoint_path
    state = load_checkpoint(run.checkpoint_path)
    assert state["step"] == 3 and state["style_names"] == ["red_stripes", "blue_checks"]
    assert set(state["rng"]) == {"python", "torch", "cuda"}
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored

    with pytest.raises(StylizeError, match="--batch-size 2, not 4"):
        train(
            config(
                tmp_path / "run",
                inputs,
                vgg_file,
                styles=2,
                batch_size=4,
                resume=str(run.checkpoint_path),
            ),
            warn=_quiet,
        )

    # as if the run had gone on past its checkpoint and been killed mid-line
    with open(run.log, "a") as f:
        f.write('{"step": 4, "total": 1.0}\n{"step": 5, "tot')
    run.resume = str(run.checkpoint_path)
    resumed = train(run, warn=_quiet)
    assert resumed.step == 6 and resumed.interrupted is None
    got = read_log(run.log)
    assert [r["step"] for r in got] == list(range(1, 7))
    for a, b in zip(got, expected, strict=True):
        for key in ("content", "style", "tv", "total"):
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=0), (a["step"], key)
    ours, theirs = load_model(run.output).net, load_model(reference.output).net
    for (name, p), q in zip(ours.state_dict().items(), theirs.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=name)

    # resuming on a changed photo folder works, with a warning that the order differs
    changed = tmp_path / "changed"
    shutil.copytree(inputs["data"], changed)
    make_photo(999, 40, 40).save(changed / "new.jpg")
    warnings: list[str] = []
    later = config(tmp_path / "run", inputs, vgg_file, styles=2, steps=4, data=str(changed),
                   resume=str(run.checkpoint_path), output=str(tmp_path / "later.pth"))  # fmt: skip
    assert train(later, warn=warnings.append).step == 4
    assert any("the photos differ from those of the checkpoint (6 then, 7 now)" in w
               for w in warnings), warnings  # fmt: skip


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, inputs, vgg_file, monkeypatch):
    forward = losses_mod.PerceptualLoss.forward
    calls = {"n": 0}

    def poisoned(self, output, content, style_index):
        terms = forward(self, output, content, style_index)
        calls["n"] += 1
        if calls["n"] >= 3:
            terms["style"] = terms["style"] * float("nan")
            terms["total"] = terms["total"] + terms["style"]
        return terms

    monkeypatch.setattr(losses_mod.PerceptualLoss, "forward", poisoned)
    cfg = config(tmp_path, inputs, vgg_file, checkpoint_every=1)
    with pytest.raises(StylizeError, match="diverged at step 3") as info:
        train(cfg, warn=_quiet)
    assert str(cfg.checkpoint_path) in str(info.value) and "--resume" in str(info.value)
    assert load_checkpoint(cfg.checkpoint_path)["step"] == 2
    assert not Path(cfg.output).exists()


def test_bf16_channels_last_on_cpu(tmp_path, inputs, vgg_file):
    cfg = config(tmp_path, inputs, vgg_file, steps=2, precision="bf16", channels_last=True)
    result = train(cfg, warn=_quiet)
    assert result.step == 2 and all(v == v for v in result.losses.values())
    model = load_model(cfg.output)
    assert all(t.dtype == torch.float32 for t in model.net.state_dict().values())


def _cli_args(tmp: Path, inputs, vgg_file, *extra: str) -> list[str]:
    return [
        "train", "--data", str(inputs["data"]), "--style", str(inputs["styles"][0]),
        "-o", str(tmp / "cli.pth"), "--steps", "2", "--batch-size", "2", "--image-size", "32",
        "--workers", "0", "--vgg-weights", str(vgg_file), "--no-progress", *extra,
    ]  # fmt: skip


def test_cli_train_then_apply(tmp_path, inputs, vgg_file):
    args = _cli_args(tmp_path, inputs, vgg_file, "--log", str(tmp_path / "l"))
    args[args.index("--workers") + 1] = "2"  # data loading in worker processes
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "skipped 2 unreadable or non-image files" in result.output
    assert "corrupt.jpg" in result.output and "notes.txt" in result.output
    assert "wrote" in result.output and (tmp_path / "cli.pth").is_file()
    assert len(read_log(tmp_path / "l")) == 2

    photo = tmp_path / "photo.jpg"
    make_photo(77, 30, 41).save(photo)
    commands = [c.name or c.callback.__name__ for c in app.registered_commands]
    if "apply" in commands:
        out = tmp_path / "stylized.png"
        applied = runner.invoke(
            app, ["apply", str(photo), "-m", str(tmp_path / "cli.pth"), "-o", str(out)]
        )
        assert applied.exit_code == 0, applied.output
        from PIL import Image

        with Image.open(out) as img:
            assert img.size == (41, 30)
    else:  # `stylize apply` not there yet: the model file still loads and runs
        net = load_model(tmp_path / "cli.pth").net
        assert net(torch.rand(1, 3, 30, 41)).shape == (1, 3, 30, 41)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--batch-size", "40"], "6 usable images found, at least --batch-size (40)"),
        (["--epochs", "1"], "--epochs and --steps: give one of them"),
        (["--style-layers", "relu1_2,conv9"], "--style-layers: unknown VGG16 layer(s) conv9"),
        (["--style", "/nonexistent/style.png"], "--style /nonexistent/style.png: no such file"),
        (["--resume", "/nonexistent/ckpt"], "--resume /nonexistent/ckpt: no such file"),
        (["--precision", "fp16", "--device", "cpu"], "fp16 is not supported on the CPU"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, inputs, vgg_file, extra, message, monkeypatch):
    monkeypatch.delenv("STYLIZE_DEBUG", raising=False)
    result = runner.invoke(app, _cli_args(tmp_path, inputs, vgg_file, *extra))
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "cli.pth").exists()


@pytest.mark.slow
def test_sigterm_saves_checkpoint_and_says_how_to_resume(tmp_path, inputs, vgg_file):
    log = tmp_path / "log.jsonl"
    args = _cli_args(tmp_path, inputs, vgg_file, "--log", str(log))
    args[args.index("--steps") + 1] = "100000"
    args[args.index("--workers") + 1] = "2"  # workers must not break the clean stop
    proc = subprocess.Popen(
        [sys.executable, "-m", "stylize", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "STYLIZE_DEBUG": ""},
    )
    try:
        deadline = time.monotonic() + 120
        while not (log.exists() and len(read_log(log)) >= 2):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, stderr
    assert "stopped by SIGTERM" in stderr and "Traceback" not in stderr
    checkpoint = tmp_path / "cli.pth.ckpt"
    assert f"--resume {checkpoint}" in stderr
    state = load_checkpoint(checkpoint)
    assert state["step"] >= 2 and state["step"] == read_log(log)[-1]["step"]
    assert not (tmp_path / "cli.pth").exists()
