"""Training checkpoints: everything needed to continue a run exactly.

A checkpoint is a plain dict (loadable with `torch.load(weights_only=True)`):

    format:        "stylize-train-checkpoint"
    version:       FORMAT_VERSION
    config:        TrainConfig.to_dict()
    net_config:    NetConfig.to_dict()
    style_names:   list[str]
    model:         the network's state dict (unwrapped: no DDP/compile prefixes)
    optimizer:     Adam state dict
    scaler:        GradScaler state dict ({} when not used)
    rng:           {"python": random.getstate(), "torch": CPU state, "cuda": [states] or []}
    step:          optimizer steps done (= the data-order position: the next global batch)
    epoch:         step // steps_per_epoch
    world_size:    processes that trained it
    losses:        the last logged loss terms

It is written atomically (a crash or Ctrl-C never leaves a half-written file).  These files are
separate from model files (`stylize.checkpoint`), which hold only what `stylize apply` needs.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import torch

from stylize.errors import StylizeError
from stylize.fileio import atomic_path

FORMAT = "stylize-train-checkpoint"
FORMAT_VERSION = 1


def rng_state() -> dict:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {"python": random.getstate(), "torch": torch.get_rng_state(), "cuda": list(cuda)}


def set_rng_state(state: dict) -> None:
    random.setstate(_as_tuple(state["python"]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        cuda = state["cuda"][: torch.cuda.device_count()]
        for i, s in enumerate(cuda):
            torch.cuda.set_rng_state(s, i)


def _as_tuple(value):
    """random.getstate() round-trips through pickling as nested tuples; lists are accepted."""
    if isinstance(value, list):
        return tuple(_as_tuple(v) for v in value)
    if isinstance(value, tuple):
        return tuple(_as_tuple(v) for v in value)
    return value


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Write `state` (the fields above, without format/version) atomically."""
    payload = {"format": FORMAT, "version": FORMAT_VERSION, **state}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read and check a training checkpoint; StylizeError naming the file when it is unusable."""
    path = Path(path)
    if not path.is_file():
        raise StylizeError(f"--resume {path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = " ".join(str(exc).split())[:160]
        raise StylizeError(
            f"--resume {path}: cannot read the checkpoint (truncated or corrupt: {reason})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise StylizeError(
            f"--resume {path}: not a stylize training checkpoint (a model file cannot be "
            f"resumed; give the .ckpt file written during training)"
        )
    version = state.get("version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise StylizeError(
            f"--resume {path}: checkpoint format version {version} is newer than this stylize "
            f"understands ({FORMAT_VERSION}); upgrade stylize"
        )
    missing = [
        k
        for k in ("config", "net_config", "model", "optimizer", "rng", "step", "style_names")
        if k not in state
    ]
    if missing:
        raise StylizeError(f"--resume {path}: checkpoint lacks {', '.join(missing)}")
    return state
