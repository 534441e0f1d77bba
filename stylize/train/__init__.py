"""Training style networks: `train(TrainConfig(...))` (what `stylize train` runs).

- `config.TrainConfig`: every setting of a run;
- `trainer.train`: the loop (AMP, channels_last, compile, checkpoints, resume, signals, DDP);
- `data`: the photo folder, crops and the resumable sample order;
- `losses`: content, Gram style and total-variation losses on VGG16 features;
- `checkpoint`: training checkpoints (separate from model files).
"""

from __future__ import annotations

from stylize.train.config import TrainConfig

__all__ = ["TrainConfig", "TrainResult", "train"]


def __getattr__(name: str):
    if name in ("train", "TrainResult"):
        from stylize.train import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'stylize.train' has no attribute {name!r}")
