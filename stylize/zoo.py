"""Bundled models: the model files shipped in the repository's `models/` folder.

A bundled model is referred to by its name (the file name without `.pt`, e.g. "magenta26");
every command that takes a model accepts such a name or a path to a model file.

Where bundled models are looked for (a name found in an earlier folder wins):
1. `models/` beside the package in a source checkout (editable installs, running from git);
2. `<prefix>/share/stylize/models/`, where a regular `pip install .` puts the files of
   `models/` (pyproject's data-files), located through the installed distribution's file list.
"""

from __future__ import annotations

import dataclasses
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from stylize.errors import StylizeError

DEFAULT_MODEL = "magenta26"
SUFFIX = ".pt"


@dataclass(frozen=True)
class BundledModel:
    """What `stylize models` shows about one bundled model."""

    name: str
    path: Path
    preset: str  # "johnson", "magenta-lite", or "custom"
    num_styles: int
    style_names: tuple[str, ...]
    named_styles: bool  # False: styles are only known by index 0..S-1
    size_bytes: int
    source: str
    license: str
    description: str

    def styles_text(self) -> str:
        """'0-25 (unnamed)' or 'starry_night, wave, ...'."""
        if not self.named_styles:
            last = self.num_styles - 1
            return ("0" if last == 0 else f"0-{last}") + " (indices; unnamed)"
        return ", ".join(f"{i}:{n}" for i, n in enumerate(self.style_names))

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "path": str(self.path),
            "preset": self.preset,
            "num_styles": self.num_styles,
            "style_names": list(self.style_names),
            "named_styles": self.named_styles,
            "size_bytes": self.size_bytes,
            "source": self.source,
            "license": self.license,
            "description": self.description,
        }


DATA_SUBDIR = ("share", "stylize", "models")  # where `pip install .` puts models/ (data-files)


def _installed_data_dir() -> Path | None:
    """The installed copy of models/ of a regular (non-editable) install, if any."""
    try:
        from importlib.metadata import PackageNotFoundError, distribution

        dist = distribution("stylize")
    except (ImportError, PackageNotFoundError):
        return None
    for entry in dist.files or []:
        if entry.parts[-4:-1] == DATA_SUBDIR:
            return Path(dist.locate_file(entry)).resolve().parent
    return None


def model_dirs() -> list[Path]:
    """Folders searched for bundled models, in order (only those that exist)."""
    package = Path(__file__).resolve().parent
    candidates: list[Path | None] = []
    if (package.parent / "pyproject.toml").is_file():
        candidates.append(package.parent / "models")  # source checkout / editable install
    candidates.append(_installed_data_dir())
    candidates.append(Path(sysconfig.get_path("data")).joinpath(*DATA_SUBDIR))
    dirs: list[Path] = []
    for d in candidates:
        if d is not None and d.is_dir() and d not in dirs:
            dirs.append(d)
    return dirs


def _bundled_paths() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder in model_dirs():
        for path in sorted(folder.glob(f"*{SUFFIX}")):
            if not path.name.startswith(".") and path.is_file():
                found.setdefault(path.stem, path)
    return found


def bundled_names() -> list[str]:
    return sorted(_bundled_paths())


def bundled_name(name_or_path: str | os.PathLike) -> str | None:
    """The bundled name `name_or_path` refers to, or None if it is a path."""
    if isinstance(name_or_path, str) and name_or_path in _bundled_paths():
        return name_or_path
    return None


def resolve(name_or_path: str | os.PathLike) -> Path:
    """A bundled model name or a model file path -> the file's path.

    A bundled name wins over a same-named file in the working directory only when the text
    has no folder part and no suffix (bundled names never do).  StylizeError listing the
    bundled names when it is neither.
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"expected a model name or path, got {type(name_or_path).__name__}")
    bundled = _bundled_paths()
    if isinstance(name_or_path, str):
        if not name_or_path.strip():
            raise StylizeError(f"empty model name; {_available(bundled)}")
        if name_or_path in bundled:
            return bundled[name_or_path]
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    looks_like_name = isinstance(name_or_path, str) and not (
        path.suffix or os.sep in name_or_path or "/" in name_or_path
    )
    if looks_like_name:
        raise StylizeError(
            f"model {name_or_path!r} is not a bundled model or an existing file; "
            f"{_available(bundled)}"
        )
    raise StylizeError(
        f"model file {path} not found; pass an existing model file or a bundled model name "
        f"({_available(bundled)})"
    )


def _available(bundled: dict[str, Path]) -> str:
    if not bundled:
        return "no bundled models are installed (models/ folder missing)"
    return "bundled models: " + ", ".join(sorted(bundled))


def preset_of(config) -> str:
    """The preset whose architecture `config` matches (any norm and style count), or "custom"."""
    from stylize.nn.transformer import PRESETS, preset

    for name in PRESETS:
        ref = dataclasses.replace(preset(name, 2), norm=config.norm, num_styles=config.num_styles)
        if ref == config:
            return name
    return "custom"


def describe(name_or_path: str | os.PathLike) -> BundledModel:
    """Load a model (bundled or file) and describe it the way `stylize models` shows it."""
    from stylize.checkpoint import load_model

    model = load_model(name_or_path)
    path = model.path or resolve(name_or_path)
    meta = model.metadata
    return BundledModel(
        name=bundled_name(name_or_path) or path.stem,
        path=path,
        preset=str(meta.get("preset") or preset_of(model.net.config)),
        num_styles=model.num_styles,
        style_names=tuple(model.style_names),
        named_styles=model.named_styles,
        size_bytes=path.stat().st_size,
        source=str(meta.get("source", "")),
        license=str(meta.get("license", "")),
        description=str(meta.get("description", "")),
    )


def bundled_models() -> list[BundledModel]:
    """Every bundled model, by name (each file is loaded and checked)."""
    return [describe(name) for name in bundled_names()]
