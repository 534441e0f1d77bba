"""The CLI skeleton: help, version, info, and the one error path every command shares."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from stylize import StylizeError, __version__
from stylize.cli import app
from stylize.cli._common import friendly_errors

runner = CliRunner()


def test_help_lists_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "info" in result.output
    assert "Fast neural style transfer" in result.output


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"stylize {__version__}"


def test_python_dash_m_works():
    proc = subprocess.run(
        [sys.executable, "-m", "stylize", "--version"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"stylize {__version__}"


def test_info_reports_versions_devices_and_backend():
    import torch

    result = runner.invoke(app, ["info"])
    assert result.exit_code == 0, result.output
    assert torch.__version__ in result.output
    assert "devices" in result.output and "cpu" in result.output
    assert "instance_norm" in result.output


def test_info_json():
    result = runner.invoke(app, ["info", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["stylize"] == __version__
    assert data["devices"][0].startswith("cpu")
    assert isinstance(data["instance_norm"], dict) and data["instance_norm"]


def test_unknown_option_is_a_usage_error():
    result = runner.invoke(app, ["info", "--no-such-flag"])
    assert result.exit_code == 2


def _failing_app() -> typer.Typer:
    demo = typer.Typer()

    @demo.command()
    @friendly_errors
    def boom(secret: str = "hunter2") -> None:
        raise StylizeError("photo.jpg: cannot read the file; check that it exists")

    @demo.command()
    def other() -> None:  # a second command keeps typer from collapsing the group
        pass

    return demo


def test_error_path_is_one_red_line_and_exit_1(monkeypatch):
    monkeypatch.delenv("STYLIZE_DEBUG", raising=False)
    result = runner.invoke(_failing_app(), ["boom"])
    assert result.exit_code == 1
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == ["error: photo.jpg: cannot read the file; check that it exists"]
    assert "Traceback" not in result.output and "hunter2" not in result.output


def test_debug_env_shows_the_exception(monkeypatch):
    monkeypatch.setenv("STYLIZE_DEBUG", "1")
    result = runner.invoke(_failing_app(), ["boom"])
    assert result.exit_code != 0
    assert isinstance(result.exception, StylizeError)


@pytest.mark.slow
def test_error_path_in_a_real_process_prints_no_traceback():
    code = (
        "import typer\n"
        "from stylize.cli._common import friendly_errors\n"
        "from stylize import StylizeError\n"
        "app = typer.Typer()\n"
        "@app.command()\n"
        "@friendly_errors\n"
        "def boom():\n"
        "    raise StylizeError('bad.png: not an image')\n"
        "@app.command()\n"
        "def other():\n"
        "    pass\n"
        "app(['boom'])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.strip() == "error: bad.png: not an image"
