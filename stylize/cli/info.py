"""`stylize info`: versions, devices, and which instance-norm backend runs, and why."""

from __future__ import annotations

import json
import os
import platform
import sys

import typer

from stylize._version import __version__
from stylize.cli._common import friendly_errors


def collect_info() -> dict[str, object]:
    """Everything `stylize info` reports, as plain data."""
    import torch

    info: dict[str, object] = {
        "stylize": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
    }
    try:
        import torchvision

        info["torchvision"] = torchvision.__version__
    except Exception as exc:  # torchvision missing or built for another torch
        info["torchvision"] = f"not importable ({type(exc).__name__}: {exc})"
    info["cuda_build"] = torch.version.cuda or "none (CPU-only torch build)"
    from stylize.device import cpu_name

    devices = [f"cpu ({cpu_name()}, {os.cpu_count()} logical CPUs)"]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            devices.append(
                f"cuda:{i} {props.name} ({props.total_memory / 2**30:.0f} GiB, "
                f"sm_{props.major}{props.minor})"
            )
    info["devices"] = devices
    from stylize import ops

    info["instance_norm"] = ops.backend_status()
    return info


@friendly_errors
def info(
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Show versions, devices, and the instance-norm backend in use."""
    data = collect_info()
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    width = max(len(k) for k in data)
    for key, value in data.items():
        if isinstance(value, dict):
            typer.echo(f"{key:<{width}}")
            for k, v in value.items():
                typer.echo(f"  {k}: {v}")
        elif isinstance(value, list):
            typer.echo(f"{key:<{width}}  {value[0] if value else ''}")
            for v in value[1:]:
                typer.echo(f"{'':<{width}}  {v}")
        else:
            typer.echo(f"{key:<{width}}  {value}")
    sys.stdout.flush()
