"""`stylize train`: train a style model on a folder of photos (one style or several)."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import typer

from stylize.cli._common import err_console, friendly_errors, print_warning

_PERF = "Speed"
_LOSS = "Loss"
_RUN = "Checkpoints and output"


def _resume_command(checkpoint: Path) -> str:
    """The command line that continues this run (torchrun launches are shown as such)."""
    argv = list(sys.argv[1:])
    if "--resume" in argv:
        i = argv.index("--resume")
        del argv[i : i + 2]
    argv = [a for a in argv if not a.startswith("--resume=")]
    world = int(os.environ.get("WORLD_SIZE", "1"))
    launcher = ["torchrun", "--nproc-per-node", str(world), "-m", "stylize"]
    prefix = launcher if world > 1 else ["stylize"]
    return shlex.join([*prefix, *argv, "--resume", str(checkpoint)])


@friendly_errors
def train(
    data: Path = typer.Option(
        ..., "--data", help="Folder of content photos (searched recursively)."
    ),
    style: list[Path] = typer.Option(
        ...,
        "--style",
        help="Style image. Repeat for a multi-style model (style indices follow this order).",
    ),
    output: Path = typer.Option(..., "--output", "-o", help="Model file to write."),
    preset: str = typer.Option("johnson", help="Network architecture: johnson or magenta-lite."),
    epochs: int = typer.Option(None, help="Passes over the photos (default: 2 unless --steps)."),
    steps: int = typer.Option(None, help="Optimizer steps to train (instead of --epochs)."),
    batch_size: int = typer.Option(4, help="Photos per step (global, over all processes)."),
    image_size: int = typer.Option(256, help="Training crop size (short side resized first)."),
    style_size: int = typer.Option(
        None, help="Style images' short side in pixels (default: --image-size)."
    ),
    lr: float = typer.Option(1e-3, help="Adam learning rate."),
    content_weight: float = typer.Option(1e5, rich_help_panel=_LOSS),
    style_weight: float = typer.Option(1e10, rich_help_panel=_LOSS),
    tv_weight: float = typer.Option(1e6, help="Total-variation weight.", rich_help_panel=_LOSS),
    content_layer: str = typer.Option("relu2_2", help="VGG16 layer.", rich_help_panel=_LOSS),
    style_layers: str = typer.Option(
        "relu1_2,relu2_2,relu3_3,relu4_3",
        help="Comma-separated VGG16 layers.",
        rich_help_panel=_LOSS,
    ),
    vgg_weights: Path = typer.Option(
        None,
        help="VGG16 weights file (torchvision's vgg16-397923af.pth or its features.* keys) "
        "(default: torchvision's pretrained weights, downloaded once).",
        rich_help_panel=_LOSS,
    ),
    seed: int = typer.Option(0, help="Seed for initialization and the data order."),
    workers: int = typer.Option(4, help="Data-loading processes (0: load in this process)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N.", rich_help_panel=_PERF),
    precision: str = typer.Option(
        "auto",
        help="auto (bf16/fp16 on CUDA, fp32 on CPU), fp32, bf16 or fp16 (with a grad scaler).",
        rich_help_panel=_PERF,
    ),
    channels_last: bool = typer.Option(
        False, help="channels_last memory format.", rich_help_panel=_PERF
    ),
    compile: bool = typer.Option(
        False, "--compile", help="torch.compile the training step.", rich_help_panel=_PERF
    ),
    deterministic: bool = typer.Option(
        False, help="Deterministic algorithms only (slower).", rich_help_panel=_PERF
    ),
    checkpoint_every: int = typer.Option(
        0, help="Save a training checkpoint every N steps.", rich_help_panel=_RUN
    ),
    checkpoint: Path = typer.Option(
        None, help="Checkpoint file (default: OUTPUT.ckpt).", rich_help_panel=_RUN
    ),
    resume: Path = typer.Option(
        None, help="Continue exactly from this checkpoint.", rich_help_panel=_RUN
    ),
    preview_every: int = typer.Option(
        0, help="Every N steps, write a grid of a few stylized photos.", rich_help_panel=_RUN
    ),
    preview: Path = typer.Option(
        None, help="Preview grid file (default: OUTPUT_STEM.preview.png).", rich_help_panel=_RUN
    ),
    log: Path = typer.Option(
        None,
        "--log",
        "--log-file",
        help="Write JSON lines (step, losses, lr, images/s) here (under torchrun, spell it "
        "--log-file: torchrun reads --log as an abbreviation of its own options).",
        rich_help_panel=_RUN,
    ),
    log_every: int = typer.Option(1, help="Steps between log lines.", rich_help_panel=_RUN),
    progress: bool = typer.Option(
        None, "--progress/--no-progress", help="Progress bar (default: on a terminal)."
    ),
) -> None:
    """Train a style model on a folder of photos.

    One --style trains an instance-norm model; several train one multi-style
    (conditional instance norm) model, used with `stylize apply --style INDEX|NAME|BLEND`.
    Ctrl-C saves a checkpoint; continue with --resume.  Multi-GPU:
    `torchrun --nproc-per-node N -m stylize train ...`.
    """
    from stylize.train import TrainConfig
    from stylize.train.trainer import train as run_training

    config = TrainConfig(
        data=str(data),
        styles=[str(s) for s in style],
        output=str(output),
        preset=preset,
        epochs=epochs,
        steps=steps,
        batch_size=batch_size,
        image_size=image_size,
        style_size=style_size,
        lr=lr,
        content_weight=content_weight,
        style_weight=style_weight,
        tv_weight=tv_weight,
        content_layer=content_layer,
        style_layers=tuple(s for s in style_layers.split(",") if s.strip()),
        seed=seed,
        workers=workers,
        device=device,
        precision=precision,
        channels_last=channels_last,
        compile=compile,
        vgg_weights=str(vgg_weights) if vgg_weights else None,
        checkpoint=str(checkpoint) if checkpoint else None,
        checkpoint_every=checkpoint_every,
        resume=str(resume) if resume else None,
        preview_every=preview_every,
        preview=str(preview) if preview else None,
        log=str(log) if log else None,
        log_every=log_every,
        progress=progress,
        deterministic=deterministic,
    )
    result = run_training(config, warn=print_warning)
    if result.interrupted:
        if result.checkpoint is None:  # not rank 0: rank 0 reports
            raise typer.Exit(130 if result.interrupted == "SIGINT" else 143)
        err_console.print(
            f"stopped by {result.interrupted} at step {result.step}/{result.total_steps}; "
            f"checkpoint saved to {result.checkpoint}. Resume with:\n"
            f"  {_resume_command(result.checkpoint)}",
            markup=False,
        )
        raise typer.Exit(130 if result.interrupted == "SIGINT" else 143)
    if result.output is not None:  # rank 0
        losses = ", ".join(f"{k} {v:.4g}" for k, v in result.losses.items())
        err_console.print(
            f"wrote {result.output} ({result.step} steps, {result.seconds:.0f} s, "
            f"{result.images_per_second:.1f} images/s; final loss {losses})",
            markup=False,
        )
