"""`stylize apply` end to end (typer CliRunner) with a tiny random-weight 3-style model."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms
from typer.testing import CliRunner

from stylize.checkpoint import save_model
from stylize.cli import app
from stylize.nn.transformer import NetConfig, TransformerNet

runner = CliRunner()

TINY = NetConfig(
    down_channels=(8, 8, 8), up_channels=(8, 8), num_residual=1, norm="conditional", num_styles=3
)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    torch.manual_seed(0)
    net = TransformerNet(TINY)
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() == 2:
                p.normal_(1.0, 0.5)
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_model(path, net.eval(), style_names=["ink", "fire", "sea"])
    return str(path)


def rgb(w: int = 20, h: int = 14, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def run(model: str, *args: str, input: bytes | None = None):
    return runner.invoke(app, ["apply", *args, "--model", model], input=input)


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGBA" if im.mode in ("RGBA", "LA") else "RGB"))


@pytest.fixture
def tree(tmp_path) -> Path:
    src = tmp_path / "in"
    (src / "sub" / "deeper").mkdir(parents=True)
    rgb(seed=1).save(src / "a.jpg", quality=95)
    rgb(seed=2).save(src / "sub" / "b.png")
    rgb(17, 9, seed=3).save(src / "sub" / "deeper" / "c.webp", lossless=True)
    (src / "notes.txt").write_text("not an image")
    rgb(seed=4).save(src / ".hidden.png")
    return src


# -- inputs and outputs -------------------------------------------------------------------


def test_folder_is_mirrored(model, tree, tmp_path):
    out = tmp_path / "out"
    res = run(model, str(tree), "-o", str(out))
    assert res.exit_code == 0, res.output
    assert files_under(out) == ["a.jpg", "sub/b.png", "sub/deeper/c.webp"]
    with Image.open(out / "sub" / "deeper" / "c.webp") as im:
        assert im.format == "WEBP" and im.size == (17, 9)
    assert "done 3, skipped 0, failed 0" in res.stderr
    assert res.stdout == ""


def test_default_outputs_go_next_to_inputs(model, tree):
    res = run(model, str(tree))
    assert res.exit_code == 0, res.output
    sibling = tree.parent / "in_stylized"
    assert files_under(sibling) == ["a.jpg", "sub/b.png", "sub/deeper/c.webp"]
    assert not (tree / "in_stylized").exists()
    res = run(model, str(tree / "a.jpg"), str(tree / "sub" / "b.png"))
    assert res.exit_code == 0, res.output
    assert (tree / "a_stylized.jpg").exists() and (tree / "sub" / "b_stylized.png").exists()


def test_glob_pattern_mirrors_below_its_fixed_part(model, tree, tmp_path):
    out = tmp_path / "g"
    res = run(model, str(tree / "**" / "*.png"), "-o", str(out))
    assert res.exit_code == 0, res.output
    assert files_under(out) == ["sub/b.png"]


def test_output_folder_inside_input_folder_is_not_reread(model, tree):
    out = tree / "results"
    for _ in range(2):
        res = run(model, str(tree), "-o", str(out), "--overwrite", "--json")
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["counts"]["total"] == 3
    assert files_under(out) == ["a.jpg", "sub/b.png", "sub/deeper/c.webp"]


def test_single_file_output_and_format_from_suffix(model, tree, tmp_path):
    out = tmp_path / "one.webp"
    res = run(model, str(tree / "a.jpg"), "-o", str(out))
    assert res.exit_code == 0, res.output
    with Image.open(out) as im:
        assert im.format == "WEBP" and im.size == (20, 14)
    res = run(model, str(tree / "a.jpg"), "-o", str(tmp_path / "x.png"), "--format", "jpg")
    assert res.exit_code == 1 and "--format" in res.stderr
    res = run(model, str(tree), "-o", str(tmp_path / "x.png"))
    assert res.exit_code == 1 and "must be a folder" in res.stderr
    assert not (tmp_path / "x.png").exists()


def test_stdin_to_stdout_and_to_file(model, tmp_path):
    buf = io.BytesIO()
    rgb(9, 7).save(buf, "PNG")
    res = run(model, "-", input=buf.getvalue())
    assert res.exit_code == 0, res.stderr
    with Image.open(io.BytesIO(res.stdout_bytes)) as im:
        assert im.format == "PNG" and im.size == (9, 7)
    res = run(model, "-", "--format", "jpg", input=buf.getvalue())
    assert res.stdout_bytes[:2] == b"\xff\xd8"
    res = run(model, "-", "-o", str(tmp_path / "s.png"), "--json", input=buf.getvalue())
    assert res.exit_code == 0 and (tmp_path / "s.png").exists()
    assert json.loads(res.stdout)["files"][0]["input"] == "<stdin>"
    res = run(model, "-", input=b"")
    assert res.exit_code == 1 and "stdin" in res.stderr
    res = run(model, "-", "--json", input=buf.getvalue())
    assert res.exit_code == 1 and "--json" in res.stderr
    res = run(model, "-", str(tmp_path / "s.png"), input=buf.getvalue())
    assert res.exit_code == 1 and "only input" in res.stderr


# -- options ------------------------------------------------------------------------------


def test_format_quality_and_max_size(model, tree, tmp_path):
    res = run(model, str(tree / "sub" / "b.png"), "-o", str(tmp_path / "f"), "--format", "jpg")
    assert res.exit_code == 0, res.output
    assert files_under(tmp_path / "f") == ["b.jpg"]
    big = tmp_path / "big.png"
    rgb(96, 64).save(big)
    sizes = []
    for q in ("10", "95"):
        o = tmp_path / f"q{q}.jpg"
        assert run(model, str(big), "-o", str(o), "--quality", q).exit_code == 0
        sizes.append(o.stat().st_size)
    assert sizes[0] < sizes[1]
    res = run(model, str(big), "-o", str(tmp_path / "small.png"), "--max-size", "24")
    assert res.exit_code == 0 and Image.open(tmp_path / "small.png").size == (24, 16)
    assert run(model, str(big), "--quality", "0").exit_code == 2
    assert run(model, str(big), "--format", "gif").exit_code == 1


def test_strength_zero_returns_the_input(model, tree, tmp_path):
    src = tree / "sub" / "b.png"
    res = run(model, str(src), "-o", str(tmp_path / "s0.png"), "--strength", "0")
    assert res.exit_code == 0, res.output
    assert np.abs(pixels(tmp_path / "s0.png").astype(int) - pixels(src)).max() <= 1
    assert run(model, str(src), "--strength", "1.5").exit_code == 2


def test_api_and_cli_give_identical_pixels(model, tree, tmp_path):
    from stylize import Stylizer

    src = tree / "sub" / "b.png"
    for extra in ([], ["--preserve-color"], ["--strength", "0.4"]):
        out = tmp_path / f"cli{len(extra)}.png"
        res = run(model, str(src), "-o", str(out), "--style", "fire", *extra)
        assert res.exit_code == 0, res.output
        api = Stylizer(model, device="cpu").stylize(
            src,
            style="fire",
            preserve_color="--preserve-color" in extra,
            strength=0.4 if "--strength" in extra else 1.0,
        )
        assert np.array_equal(pixels(out), np.asarray(api)), extra
    assert not np.array_equal(pixels(tmp_path / "cli0.png"), pixels(tmp_path / "cli1.png"))


def test_styles_by_index_name_blend_and_out_of_range(model, tree, tmp_path):
    src = str(tree / "sub" / "b.png")
    outs = {}
    for spec in ("1", "fire", "0:0.5,2:0.5"):
        o = tmp_path / f"{spec.replace(':', '_').replace(',', '-')}.png"
        assert run(model, src, "-o", str(o), "--style", spec).exit_code == 0
        outs[spec] = pixels(o)
    assert np.array_equal(outs["1"], outs["fire"])
    assert not np.array_equal(outs["1"], outs["0:0.5,2:0.5"])
    res = run(model, src, "--style", "7")
    assert res.exit_code == 1 and "0-2" in res.stderr
    assert not (tree / "sub" / "b_stylized.png").exists()


def test_model_device_precision_errors(model, tree, tmp_path):
    src = str(tree / "a.jpg")
    res = runner.invoke(app, ["apply", src, "--model", str(tmp_path / "missing.pt")])
    assert res.exit_code == 1 and "missing.pt" in res.stderr
    res = run(model, src, "--precision", "fp16", "--device", "cpu")
    assert res.exit_code == 1 and "fp16" in res.stderr
    if not torch.cuda.is_available():
        res = run(model, src, "--device", "cuda")
        assert res.exit_code == 1 and "CUDA" in res.stderr
    res = run(model, src, "-o", str(tmp_path / "bf.png"), "--precision", "bf16", "--device", "cpu")
    assert res.exit_code == 0, res.output


def test_batching_tiling_and_compile_off_agree(model, tmp_path):
    src = tmp_path / "same"
    src.mkdir()
    for i in range(5):
        rgb(40, 24, seed=10 + i).save(src / f"{i}.png")
    outs = {}
    for name, extra in {
        "b1": ["--batch-size", "1"],
        "b3": ["--batch-size", "3", "--compile", "off"],
    }.items():
        res = run(model, str(src), "-o", str(tmp_path / name), *extra)
        assert res.exit_code == 0, res.output
        outs[name] = [pixels(tmp_path / name / f"{i}.png").astype(int) for i in range(5)]
    for a, b in zip(outs["b1"], outs["b3"], strict=True):
        assert np.abs(a - b).max() <= 1
    res = run(model, str(src / "0.png"), "-o", str(tmp_path / "t.png"), "--tile-size", "64")
    assert res.exit_code == 0 and Image.open(tmp_path / "t.png").size == (40, 24)
    assert run(model, str(src), "--compile", "sometimes").exit_code == 1


def test_skip_existing_then_overwrite(model, tree, tmp_path):
    out = tmp_path / "o"
    assert run(model, str(tree), "-o", str(out)).exit_code == 0
    before = (out / "a.jpg").stat().st_mtime_ns
    res = run(model, str(tree), "-o", str(out), "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["counts"] == {"total": 3, "done": 0, "skipped": 3, "failed": 0}
    assert all("--overwrite" in f["reason"] for f in data["files"])
    assert "skipped 3 existing output(s)" in res.stderr
    assert (out / "a.jpg").stat().st_mtime_ns == before
    res = run(model, str(tree), "-o", str(out), "--overwrite")
    assert res.exit_code == 0 and "done 3" in res.stderr
    assert (out / "a.jpg").stat().st_mtime_ns != before


def test_never_overwrites_an_input(model, tree):
    src = tree / "sub" / "b.png"
    original = src.read_bytes()
    res = run(model, str(src), "-o", str(src), "--overwrite")
    assert res.exit_code == 1 and "overwrite an input" in res.stderr
    # -o naming the inputs' own folder: outputs get the suffix instead of the input's name.
    res = run(model, str(src), "-o", str(tree / "sub"), "--overwrite")
    assert res.exit_code == 0, res.output
    assert (tree / "sub" / "b_stylized.png").exists() and src.read_bytes() == original


def test_json_schema(model, tree, tmp_path):
    (tree / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    res = run(model, str(tree), "-o", str(tmp_path / "j"), "--json", "--quiet")
    assert res.exit_code == 1
    data = json.loads(res.stdout)
    assert set(data) == {
        "schema", "ok", "counts", "seconds", "images_per_second", "settings", "files"
    }
    assert data["schema"] == "stylize.apply/1" and data["ok"] is False
    assert data["counts"] == {"total": 4, "done": 3, "skipped": 0, "failed": 1}
    assert isinstance(data["seconds"], float) and data["images_per_second"] > 0
    assert data["settings"]["device"] == "cpu" and data["settings"]["precision"] == "fp32"
    assert data["settings"]["model"].endswith("tiny.pt")
    for f in data["files"]:
        assert set(f) == {"input", "output", "status", "reason", "width", "height", "seconds"}
        assert f["status"] in ("done", "failed")
        if f["status"] == "done":
            assert f["reason"] is None and f["width"] > 0 and Path(f["output"]).exists()
        else:
            assert f["input"].endswith("broken.png") and f["reason"] and f["width"] is None
    assert res.stderr.count("error:") == 1 and "done 3" not in res.stderr  # --quiet


def test_quiet_and_no_progress_bar_without_terminal(model, tree, tmp_path):
    res = run(model, str(tree), "-o", str(tmp_path / "q"), "--quiet")
    assert res.exit_code == 0 and res.stderr == "" and res.stdout == ""
    res = run(model, str(tree), "-o", str(tmp_path / "p"))
    assert "img/s" not in res.stderr and "%|" not in res.stderr


# -- real-world images --------------------------------------------------------------------


def test_odd_modes_sizes_exif_alpha_icc(model, tmp_path):
    src = tmp_path / "odd"
    src.mkdir()
    rgb(1, 1).save(src / "one.png")
    rgb(3, 5).save(src / "three_by_five.png")
    rgb(2, 50).save(src / "tall.png")
    rgb(60, 3).save(src / "wide.jpg")
    rgb().convert("L").save(src / "grey.png")
    rgb().convert("P").save(src / "palette.gif")
    rgb().convert("CMYK").save(src / "cmyk.jpg")
    Image.fromarray(np.full((6, 8), 40000, dtype=np.uint16)).save(src / "deep.png")
    rgba = rgb().convert("RGBA")
    alpha = Image.fromarray(np.tile(np.arange(20, dtype=np.uint8) * 12, (14, 1)))
    rgba.putalpha(alpha)
    rgba.save(src / "alpha.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    rgb(20, 10).save(src / "rotated.jpg", exif=exif.tobytes())
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    rgb().save(src / "icc.jpg", icc_profile=icc)

    out = tmp_path / "out"
    res = run(model, str(src), "-o", str(out), "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["counts"]["done"] == 11
    sizes = {p.name: Image.open(p).size for p in out.iterdir()}
    assert sizes["one.png"] == (1, 1) and sizes["three_by_five.png"] == (3, 5)
    assert sizes["tall.png"] == (2, 50) and sizes["wide.jpg"] == (60, 3)
    assert sizes["rotated.jpg"] == (10, 20)  # EXIF orientation applied
    assert sizes["palette.png"] == (20, 14)  # gif is read, written as png
    with Image.open(out / "alpha.png") as im:
        assert im.mode == "RGBA" and np.array_equal(np.asarray(im)[..., 3], np.asarray(alpha))
    with Image.open(out / "icc.jpg") as im:
        assert im.info.get("icc_profile") == icc
    with Image.open(out / "grey.png") as im:
        assert im.mode == "RGB"


# -- failures -----------------------------------------------------------------------------


def test_per_file_failures_do_not_stop_the_run(model, tree, tmp_path):
    (tree / "text.jpg").write_text("this is not a jpeg")
    buf = io.BytesIO()
    rgb(64, 64).save(buf, "JPEG")
    (tree / "truncated.jpg").write_bytes(buf.getvalue()[:300])
    rgb(60, 60).save(tree / "huge.png")
    out = tmp_path / "out"
    res = run(model, str(tree), str(tmp_path / "nope.png"), "-o", str(out), "--max-pixels", "1000")
    assert res.exit_code == 1
    err = res.stderr
    assert "nope.png: no such file" in err
    assert "text.jpg: not an image" in err
    assert "truncated.jpg: image data is truncated" in err
    assert "huge.png: image is too large" in err and "--max-pixels" in err
    assert err.count("error:") == 4
    assert files_under(out) == ["a.jpg", "sub/b.png", "sub/deeper/c.webp"]  # no partial files
    assert "failed 4" in err
    res = run(model, str(tree / "huge.png"), "-o", str(tmp_path / "h.png"), "--max-pixels", "0")
    assert res.exit_code == 0


def test_unwritable_output_is_a_per_file_failure(model, tree, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "a.jpg").mkdir()  # a folder where an output file should go
    res = run(model, str(tree), "-o", str(out), "--overwrite")
    assert res.exit_code == 1 and "a.jpg" in res.stderr
    assert files_under(out) == ["sub/b.png", "sub/deeper/c.webp"]
    assert not [p for p in out.rglob(".*")]  # no temp files left


def test_interrupt_leaves_no_partial_or_temp_files(model, tree, tmp_path, monkeypatch):
    original_save = Image.Image.save

    def save_then_interrupt(self, fp, *args, **kwargs):
        original_save(self, fp, *args, **kwargs)  # the temp file is complete on disk ...
        raise KeyboardInterrupt  # ... and Ctrl-C arrives before the rename

    monkeypatch.setattr(Image.Image, "save", save_then_interrupt)
    out = tmp_path / "o"
    res = run(model, str(tree), "-o", str(out))
    assert res.exit_code == 130 and "interrupted" in res.stderr
    assert not out.exists() or files_under(out) == []


def test_no_inputs_and_empty_folder(model, tmp_path):
    assert runner.invoke(app, ["apply"]).exit_code == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    res = run(model, str(empty))
    assert res.exit_code == 1 and "no images found" in res.stderr
    res = run(model, str(tmp_path / "*.png"))
    assert res.exit_code == 1 and "matches no files" in res.stderr


def test_outputs_get_normal_file_permissions(model, tree, tmp_path):
    out = tmp_path / "perm.png"
    assert run(model, str(tree / "sub" / "b.png"), "-o", str(out)).exit_code == 0
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask


def test_suffix_and_colliding_outputs(model, tmp_path):
    src = tmp_path / "c"
    src.mkdir()
    rgb(seed=1).save(src / "x.png")
    rgb(seed=2).save(src / "x.jpg")
    res = run(model, str(src / "x.png"), "--suffix", "-art")
    assert res.exit_code == 0 and (src / "x-art.png").exists()
    assert run(model, str(src / "x.png"), "--suffix", "a/b").exit_code == 1
    res = run(model, str(src / "x.png"), str(src / "x.jpg"), "-o", str(tmp_path / "o"),
              "--format", "png", "--json")
    assert res.exit_code == 1
    statuses = [f["status"] for f in json.loads(res.stdout)["files"]]
    assert sorted(statuses) == ["done", "failed"] and "collides" in res.stderr
