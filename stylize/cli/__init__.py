"""The `stylize` command-line application (typer).

Each command lives in its own module and is registered here.  Modules import torch and the
library lazily, inside the command, so `stylize --help` stays fast.
"""

from __future__ import annotations

import typer

from stylize._version import __version__

app = typer.Typer(
    name="stylize",
    help="Fast neural style transfer: stylize photos and folders, train your own styles.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"stylize {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False,
        "--version",
        callback=_version_callback,
        is_eager=True,
        help="Print the version and exit.",
    ),
) -> None:
    """Fast neural style transfer."""


def _register() -> None:
    from stylize.cli import info

    app.command("info")(info.info)
    from stylize.cli import apply

    app.command("apply")(apply.apply)
    from stylize.cli import models

    app.command("models")(models.models)
    from stylize.cli import train

    app.command("train")(train.train)


_register()


def main() -> None:
    """Console-script entry point."""
    app(prog_name="stylize")
