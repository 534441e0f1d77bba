"""`stylize models`: list the bundled models, or describe one model (bundled name or file)."""

from __future__ import annotations

import json

import typer

from stylize.cli._common import friendly_errors


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 2**10:.0f} KB"


@friendly_errors
def models(
    model: str = typer.Argument(
        None, help="Describe this model (a bundled name or a model file) instead of listing."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """List the bundled models (name, preset, styles, size, source and licence)."""
    from rich.console import Console
    from rich.table import Table

    from stylize import zoo

    infos = [zoo.describe(model)] if model else zoo.bundled_models()
    if as_json:
        typer.echo(json.dumps([i.to_dict() for i in infos], indent=2))
        return
    console = Console(highlight=False, soft_wrap=True)
    if not infos:
        console.print("No bundled models found (the models/ folder is missing).")
        return
    table = Table(title=None if model else "Bundled models", show_lines=True)
    for col in ("name", "preset", "styles", "style names / indices", "size", "source / licence"):
        table.add_column(col, overflow="fold")
    for info in infos:
        default = " (default)" if info.name == zoo.DEFAULT_MODEL and not model else ""
        source = info.source or "-"
        if info.license:
            source += f"\nlicence: {info.license}"
        table.add_row(
            info.name + default,
            info.preset,
            str(info.num_styles),
            info.styles_text(),
            _size(info.size_bytes),
            source,
        )
    console.print(table)
    if model:
        console.print(f"file: {infos[0].path}")
        if infos[0].description:
            console.print(infos[0].description)
    else:
        console.print(
            "Commands take a bundled name or a model file path; pick a style by index, "
            "by name, or blend styles like 3:0.5,12:0.5."
        )
