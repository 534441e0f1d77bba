"""What every command shares: the stderr console and the error boundary.

Commands are thin: they turn options into config dataclasses, call the library, and print.
`friendly_errors` is the one place where an expected failure (`StylizeError`) becomes one red
line on stderr and exit code 1.  `STYLIZE_DEBUG=1` lets the exception through with its
traceback (locals are never shown).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import TypeVar

import typer
from rich.console import Console
from rich.text import Text

from stylize.errors import StylizeError

F = TypeVar("F", bound=Callable)

err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def debug_enabled() -> bool:
    return os.environ.get("STYLIZE_DEBUG", "").strip() not in ("", "0", "false", "no")


def print_error(message: str) -> None:
    """One red line on stderr (markup in `message` is printed literally)."""
    text = Text("error: ", style="bold red")
    text.append(" ".join(str(message).split()), style="red")
    err_console.print(text)


def print_warning(message: str) -> None:
    text = Text("warning: ", style="bold yellow")
    text.append(" ".join(str(message).split()), style="yellow")
    err_console.print(text)


def friendly_errors(fn: F) -> F:
    """Decorate a command: StylizeError -> red line + exit 1, Ctrl-C -> exit 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except StylizeError as exc:
            if debug_enabled():
                raise
            print_error(str(exc))
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            if debug_enabled():
                raise
            print_error("interrupted")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]
