"""TrainConfig: every setting of a training run (the CLI fills it, the trainer reads it).

`to_dict()` gives plain python types (stored in checkpoints and in the model's metadata);
`validate()` raises one StylizeError naming the option at fault.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

from stylize.errors import StylizeError

DEFAULT_STYLE_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")
DEFAULT_EPOCHS = 2

# Settings that must not change when resuming (the rest, e.g. --steps, --log, may).
RESUME_FIXED = (
    "styles",
    "preset",
    "batch_size",
    "image_size",
    "style_size",
    "lr",
    "content_weight",
    "style_weight",
    "tv_weight",
    "content_layer",
    "style_layers",
    "seed",
)


@dataclass
class TrainConfig:
    data: str  # folder of content photos, searched recursively
    styles: list[str]  # style images; index i of a multi-style model = styles[i]
    output: str  # the model file to write
    preset: str = "johnson"
    epochs: int | None = None  # default DEFAULT_EPOCHS when steps is None too
    steps: int | None = None  # total optimizer steps (instead of epochs)
    batch_size: int = 4  # global batch (split across DDP ranks)
    image_size: int = 256  # training crop side
    style_size: int | None = None  # style images' short side; None -> image_size
    lr: float = 1e-3
    content_weight: float = 1e5
    style_weight: float = 1e10
    tv_weight: float = 1e6
    content_layer: str = "relu2_2"
    style_layers: tuple[str, ...] = DEFAULT_STYLE_LAYERS
    seed: int = 0
    workers: int = 4  # DataLoader worker processes per rank (0 = load in the main process)
    device: str = "auto"
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    channels_last: bool = False
    compile: bool = False
    vgg_weights: str | None = None
    checkpoint: str | None = None  # training checkpoint path; None -> <output>.ckpt
    checkpoint_every: int = 0  # steps between checkpoints (0: only on interrupt and at the end)
    resume: str | None = None
    preview_every: int = 0  # steps between preview grids (0: none)
    preview: str | None = None  # preview image path; None -> <output stem>.preview.png
    log: str | None = None  # JSON-lines log file
    log_every: int = 1  # steps between log lines / progress-bar updates
    progress: bool | None = None  # progress bar: None -> only on a terminal
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower, exact)
    extra: dict = field(default_factory=dict)  # free-form metadata recorded in the model

    @property
    def checkpoint_path(self) -> Path:
        return Path(self.checkpoint) if self.checkpoint else Path(f"{self.output}.ckpt")

    @property
    def preview_path(self) -> Path:
        if self.preview:
            return Path(self.preview)
        out = Path(self.output)
        return out.with_name(f"{out.stem}.preview.png")

    @property
    def effective_style_size(self) -> int:
        return self.style_size or self.image_size

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["style_layers"] = list(self.style_layers)
        d["styles"] = list(self.styles)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in names}
        if "style_layers" in kwargs:
            kwargs["style_layers"] = tuple(kwargs["style_layers"])
        return cls(**kwargs)

    def validate(self) -> TrainConfig:
        """Check values (not files); returns self.  StylizeError names the option."""
        from stylize.nn.transformer import PRESETS
        from stylize.nn.vgg import check_layers

        if not self.styles:
            raise StylizeError("--style: give at least one style image")
        if self.preset not in PRESETS:
            raise StylizeError(f"--preset {self.preset!r}: choose one of {', '.join(PRESETS)}")
        if self.epochs is not None and self.steps is not None:
            raise StylizeError("--epochs and --steps: give one of them, not both")
        positive = {
            "--epochs": self.epochs,
            "--steps": self.steps,
            "--batch-size": self.batch_size,
            "--image-size": self.image_size,
            "--style-size": self.style_size,
            "--log-every": self.log_every,
        }
        for option, value in positive.items():
            if value is not None and (isinstance(value, bool) or value < 1):
                raise StylizeError(f"{option} must be a positive integer, got {value}")
        if self.image_size < 16:
            raise StylizeError(f"--image-size must be at least 16, got {self.image_size}")
        for option, value in {
            "--checkpoint-every": self.checkpoint_every,
            "--preview-every": self.preview_every,
            "--workers": self.workers,
        }.items():
            if value < 0:
                raise StylizeError(f"{option} must be >= 0, got {value}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise StylizeError(f"--lr must be a positive number, got {self.lr}")
        for option, value in {
            "--content-weight": self.content_weight,
            "--style-weight": self.style_weight,
            "--tv-weight": self.tv_weight,
        }.items():
            if not (math.isfinite(value) and value >= 0):
                raise StylizeError(f"{option} must be a finite number >= 0, got {value}")
        check_layers([self.content_layer], "--content-layer")
        self.style_layers = check_layers(self.style_layers, "--style-layers")
        if Path(self.output).resolve() == self.checkpoint_path.resolve():
            raise StylizeError("--checkpoint must differ from the output model file")
        return self
