"""Choosing a style (or a blend of styles) of a multi-style model: spec -> weight vector (S,).

Accepted specs (S = number of styles of the model, names = its style names):

- None: style 0 (the first style; the only one of a single-style model).
- an int index: 3
- a str: an index "3", a name "starry_night" (exact, else case-insensitive), or a blend
  "3:0.5,12:0.5" / "starry_night:2,wave:1" / "3,12" (a missing weight means 1).
- a dict {index_or_name: weight}.
- a sequence or tensor of S non-negative weights.

Blend weights must be finite and >= 0 with a positive sum; they are normalized to sum to 1.
An index named twice adds its weights.  Indices are never negative and never wrap around.
Names that are digits only ("3") always mean the index.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from stylize.errors import StylizeError


def _valid_range(num_styles: int) -> str:
    return "0" if num_styles == 1 else f"0-{num_styles - 1}"


def _describe(num_styles: int, names: Sequence[str] | None) -> str:
    text = f"this model has {num_styles} style{'s' if num_styles != 1 else ''} (valid: "
    text += _valid_range(num_styles)
    named = [n for i, n in enumerate(names or []) if n and n != str(i)]
    if named:
        shown = ", ".join(named[:12]) + (", ..." if len(named) > 12 else "")
        text += f", or a name: {shown}"
    return text + ")"


def _index(key: object, num_styles: int, names: Sequence[str] | None) -> int:
    """One style reference (int, digit string, or name) -> index in [0, S)."""
    if isinstance(key, bool):
        raise StylizeError(
            f"style {key!r} is not an index or a name; {_describe(num_styles, names)}"
        )
    if isinstance(key, int):
        idx = key
    elif isinstance(key, str):
        text = key.strip()
        if text.lstrip("+-").isdigit():
            idx = int(text)
        else:
            if not text:
                raise StylizeError(f"empty style name; {_describe(num_styles, names)}")
            names = list(names or [])
            if text in names:
                return names.index(text)
            folded = [i for i, n in enumerate(names) if n.casefold() == text.casefold()]
            if len(folded) == 1:
                return folded[0]
            raise StylizeError(f"unknown style {text!r}; {_describe(num_styles, names)}")
    else:
        raise StylizeError(
            f"style {key!r} is not an index or a name; {_describe(num_styles, names)}"
        )
    if not 0 <= idx < num_styles:
        raise StylizeError(f"style index {idx} is out of range; {_describe(num_styles, names)}")
    return idx


def _weight(value: object, where: str) -> float:
    try:
        w = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise StylizeError(f"style weight {value!r} for {where} is not a number") from None
    if not math.isfinite(w) or w < 0:
        raise StylizeError(f"style weight {value!r} for {where} must be a finite number >= 0")
    return w


def _parse_blend(text: str) -> list[tuple[str, object]]:
    """'3:0.5, wave:1, 12' -> [('3', '0.5'), ('wave', '1'), ('12', 1.0)]."""
    items: list[tuple[str, object]] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            raise StylizeError(f"style blend {text!r} has an empty entry; write e.g. 3:0.5,12:0.5")
        key, sep, weight = part.rpartition(":")
        items.append((key.strip(), weight.strip()) if sep else (part, 1.0))
    return items


def style_weights(
    spec: object, num_styles: int, names: Sequence[str] | None = None
) -> torch.Tensor:
    """Turn a style spec into normalized weights (S,) float32 (see the module docstring)."""
    if isinstance(num_styles, bool) or not isinstance(num_styles, int) or num_styles < 1:
        raise ValueError(f"num_styles must be an int >= 1, got {num_styles!r}")
    if names is not None and len(names) != num_styles:
        raise ValueError(f"got {len(names)} style names for {num_styles} styles")
    out = torch.zeros(num_styles, dtype=torch.float64)
    if spec is None:
        out[0] = 1.0
        return out.float()
    if isinstance(spec, torch.Tensor) and spec.dim() == 0:
        spec = spec.item()
    if isinstance(spec, (torch.Tensor, list, tuple)):
        values = spec.tolist() if isinstance(spec, torch.Tensor) else list(spec)
        if len(values) != num_styles or any(isinstance(v, (list, tuple)) for v in values):
            raise StylizeError(
                f"a style weight vector needs exactly {num_styles} numbers, got {len(values)}"
            )
        items: list[tuple[object, object]] = [(i, v) for i, v in enumerate(values)]
    elif isinstance(spec, Mapping):
        items = list(spec.items())
    elif isinstance(spec, str) and ("," in spec or ":" in spec):
        items = list(_parse_blend(spec))
    else:
        items = [(spec, 1.0)]
    if not items:
        raise StylizeError(f"empty style spec; {_describe(num_styles, names)}")
    for key, value in items:
        idx = _index(key, num_styles, names)
        out[idx] += _weight(value, f"style {key!r}")
    total = float(out.sum())
    if not total > 0:
        raise StylizeError(f"style weights {spec!r} sum to 0; give at least one positive weight")
    return (out / total).float()
