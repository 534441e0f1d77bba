"""stylize: fast neural style transfer.

Public API (imported lazily so that `stylize --help` does not pay for importing torch):

- `Stylizer`: a loaded model on a device; stylizes images and folders.
- `load_model`: reads a model file or a bundled model by name.
- `instance_norm`: the instance-normalization operator.
- `StylizeError`: the exception type for expected failures.
"""

from __future__ import annotations

from ._version import __version__
from .errors import StylizeError

__all__ = ["Stylizer", "StylizeError", "__version__", "instance_norm", "load_model"]

_LAZY = {
    "Stylizer": ("stylize.stylizer", "Stylizer"),
    "load_model": ("stylize.checkpoint", "load_model"),
    "instance_norm": ("stylize.ops", "instance_norm"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'stylize' has no attribute {name!r}")
