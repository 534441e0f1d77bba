"""The model file: one trained style network, saved as a plain dict and loaded safely.

File contents (torch.save of a dict holding only plain python types and tensors):

    format          "stylize.model"
    format_version  FORMAT_VERSION (files from a newer stylize are refused with a clear message)
    config          NetConfig.to_dict()
    style_names     list[str], one per style; unnamed styles are named by their index "0", "1", ...
    metadata        dict of plain values (training settings, source, licence, ...; may be empty)
    state_dict      {name: float32 CPU tensor}
    sha256          hex digest over the state dict (names, shapes and bytes): detects corruption
                    that the zip container does not

Loading always uses torch.load(weights_only=True): a file whose pickle would create arbitrary
objects or run code is refused, never executed.  Every failure is a StylizeError naming the file.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from stylize.errors import StylizeError
from stylize.fileio import atomic_write_bytes
from stylize.nn.transformer import NetConfig, TransformerNet

FORMAT = "stylize.model"
FORMAT_VERSION = 1

_KEYS = ("format", "format_version", "config", "style_names", "metadata", "state_dict", "sha256")


@dataclass
class ModelFile:
    """A loaded model: the network (eval mode, CPU, float32) and what describes it."""

    net: TransformerNet
    style_names: list[str]  # len == net.num_styles
    metadata: dict = field(default_factory=dict)
    source: str = ""  # bundled name or file path, for messages
    path: Path | None = None

    @property
    def num_styles(self) -> int:
        return self.net.num_styles

    @property
    def named_styles(self) -> bool:
        """False when every style is only known by its index."""
        return self.style_names != default_style_names(self.net.num_styles)


def default_style_names(num_styles: int) -> list[str]:
    """Names of unnamed styles: their indices as strings ("0", "1", ...)."""
    return [str(i) for i in range(num_styles)]


def validate_style_names(names: Sequence[str], num_styles: int) -> list[str]:
    """Check style names (one per style, unique, non-empty; a digits-only name must equal its
    own index so that "3" always means style 3); StylizeError otherwise."""
    names = list(names)
    if len(names) != num_styles:
        raise StylizeError(f"{len(names)} style names given for a model with {num_styles} styles")
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name.strip() or name != name.strip():
            raise StylizeError(f"style name {name!r} (style {i}) must be non-empty text")
        if name.lstrip("+-").isdigit() and name != str(i):
            raise StylizeError(
                f"style name {name!r} (style {i}) looks like another style's index; "
                "rename it (e.g. give the style image a non-numeric file name)"
            )
        key = name.casefold()
        if key in seen:
            raise StylizeError(
                f"style name {name!r} is used twice (styles {seen[key]} and {i}); "
                "style names must be unique (ignoring case)"
            )
        seen[key] = i
    return names


def _plain(value: object, where: str) -> object:
    """Metadata -> plain python types (Path -> str, tuple -> list); TypeError otherwise.

    Subclasses of the plain types (torch's TorchVersion is a str, IntEnum an int) become the
    plain type itself: weights_only loading would refuse them."""
    if value is None:
        return value
    for plain in (bool, int, float, str):
        if isinstance(value, plain):
            return plain(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"metadata key {k!r} in {where} must be a str")
            out[k] = _plain(v, f"{where}.{k}")
        return out
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(
        f"metadata {where} has type {type(value).__name__}; use plain python values "
        "(str, int, float, bool, None, list, dict)"
    )


def _digest(state_dict: Mapping[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name]
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.detach().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_model(
    path: str | os.PathLike,
    net: TransformerNet,
    style_names: Sequence[str] | None = None,
    metadata: dict | None = None,
) -> None:
    """Write `net` (any device/dtype; stored as float32 CPU) as a model file, atomically."""
    net = getattr(net, "_orig_mod", net)  # unwrap torch.compile
    if not isinstance(net, TransformerNet):
        raise TypeError(f"save_model needs a TransformerNet, got {type(net).__name__}")
    names = validate_style_names(
        default_style_names(net.num_styles) if style_names is None else style_names,
        net.num_styles,
    )
    state = {
        k: v.detach().to("cpu", torch.float32).contiguous().clone()
        for k, v in net.state_dict().items()
    }
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": net.config.to_dict(),
        "style_names": names,
        "metadata": _plain(dict(metadata or {}), "metadata"),
        "state_dict": state,
        "sha256": _digest(state),
    }
    # Serialized in memory: the archive's inner folder name is then always "archive" (not the
    # random temporary file name), so the same model always gives the same bytes.
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


# -- loading --------------------------------------------------------------------------------


def _sniff(head: bytes, suffix: str) -> str | None:
    """A short description of well-known non-model file types, from their first bytes."""
    kinds = {
        b"\xff\xd8\xff": "a JPEG image",
        b"\x89PNG": "a PNG image",
        b"GIF8": "a GIF image",
        b"BM": "a BMP image",
        b"II*\x00": "a TIFF image",
        b"MM\x00*": "a TIFF image",
    }
    for magic, kind in kinds.items():
        if head.startswith(magic):
            return kind
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "a WebP image"
    if suffix.lower() == ".onnx":
        return "an ONNX model (convert it with scripts/import_magenta_onnx.py)"
    return None


def _read(path: Path, label: str) -> object:
    if not path.exists():
        raise StylizeError(
            f"model file {label} not found; pass a bundled model name (see `stylize models`) "
            "or the path of a model file"
        )
    if path.is_dir():
        raise StylizeError(f"model {label} is a directory; pass a model file (.pt)")
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as exc:
        raise StylizeError(f"cannot read model file {label}: {exc.strerror or exc}") from None
    if not head:
        raise StylizeError(f"model file {label} is empty; replace it with a complete copy")
    fix = "re-download, re-train or re-export it"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "global" in text.lower():
            raise StylizeError(
                f"refusing to load {label}: it contains pickled Python objects or code "
                "that a stylize model file never has (not executed); use a file written by "
                "`stylize train` or a bundled model"
            ) from None
        kind = _sniff(head, path.suffix)
        what = f"it is {kind}" if kind else "not a PyTorch file, or corrupt"
        raise StylizeError(f"{label} is not a stylize model file ({what})") from None
    except Exception as exc:  # torch.load fails in many ways on damaged files
        kind = _sniff(head, path.suffix)
        if kind:
            raise StylizeError(f"{label} is not a stylize model file (it is {kind})") from None
        if head.startswith(b"PK\x03\x04") or isinstance(exc, EOFError):  # torch.save's zip
            raise StylizeError(f"model file {label} is truncated or corrupt; {fix}") from None
        raise StylizeError(
            f"{label} is not a stylize model file (cannot read it: {type(exc).__name__})"
        ) from None


def _check(obj: object, label: str) -> tuple[NetConfig, list[str], dict, dict]:
    fix = "re-download, re-train or re-export it"
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        hint = ""
        if isinstance(obj, dict) and ("model" in obj or "optimizer" in obj):
            hint = " (it looks like a training checkpoint, not a finished model file)"
        elif (
            isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values())
        ):
            hint = " (it is a bare state dict without the network config)"
        raise StylizeError(f"{label} is not a stylize model file{hint}")
    version = obj.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise StylizeError(f"model file {label} has an invalid format version {version!r}; {fix}")
    if version > FORMAT_VERSION:
        raise StylizeError(
            f"model file {label} uses model format {version}, newer than this stylize reads "
            f"(up to {FORMAT_VERSION}); upgrade stylize (pip install -U stylize)"
        )
    missing = [k for k in _KEYS if k not in obj]
    if missing:
        raise StylizeError(
            f"model file {label} is incomplete (missing {', '.join(missing)}); {fix}"
        )
    try:
        config = NetConfig.from_dict(obj["config"])
    except StylizeError as exc:
        raise StylizeError(f"model file {label} has an {exc}; {fix}") from None
    state, metadata = obj["state_dict"], obj["metadata"]
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise StylizeError(f"model file {label} has a malformed state dict; {fix}")
    if not isinstance(metadata, dict):
        raise StylizeError(f"model file {label} has malformed metadata; {fix}")
    try:
        digest = _digest(state)
    except (RuntimeError, TypeError):  # exotic tensor types a model file never has
        raise StylizeError(f"model file {label} has a malformed state dict; {fix}") from None
    if obj["sha256"] != digest:
        raise StylizeError(f"model file {label} is corrupt (checksum mismatch); {fix}")
    names = obj["style_names"]
    try:
        names = validate_style_names(names, config.num_styles)
    except (StylizeError, TypeError) as exc:
        raise StylizeError(f"model file {label} has invalid style names: {exc}") from None
    return config, names, metadata, state


def load_model(name_or_path: str | os.PathLike) -> ModelFile:
    """Load a bundled model by name or a model file by path (StylizeError naming the file)."""
    from stylize import zoo

    path = zoo.resolve(name_or_path)
    bundled = zoo.bundled_name(name_or_path)
    label = f"'{bundled}' ({path})" if bundled else str(path)
    config, names, metadata, state = _check(_read(path, label), label)
    net = TransformerNet(config)
    expected = net.state_dict()
    bad = sorted(set(expected) ^ set(state)) + [
        k for k in expected if k in state and expected[k].shape != state[k].shape
    ]
    if bad:
        raise StylizeError(
            f"model file {label} does not match its network config "
            f"(weights {', '.join(bad[:4])}{', ...' if len(bad) > 4 else ''} differ); "
            "re-download, re-train or re-export it"
        )
    if not all(torch.isfinite(t).all() for t in state.values()):
        raise StylizeError(f"model file {label} has non-finite weights (NaN or inf); re-train it")
    net.load_state_dict({k: v.float() for k, v in state.items()})
    net.eval()
    return ModelFile(
        net=net,
        style_names=names,
        metadata=metadata,
        source=bundled or str(path),
        path=path,
    )
