"""The training loop: data -> TransformerNet -> perceptual loss -> Adam, with everything around it.

`train(config)` runs one training job and returns a `TrainResult`:
- device and precision are resolved once here (autocast with bf16/fp16, a GradScaler for fp16);
  optional channels_last memory format and torch.compile of network + loss;
- distributed data parallel when started by torchrun (WORLD_SIZE > 1): NCCL on CUDA, gloo on
  CPU; `batch_size` is the global batch, each rank computes its shard of every global batch
  (see `data.DataOrder`), so a run on N processes follows the single-process run;
  only rank 0 writes checkpoints, logs, previews and the model;
- checkpoints (`train.checkpoint`) every `checkpoint_every` steps and on SIGINT/SIGTERM, after
  which the run stops cleanly (`TrainResult.interrupted` names the signal); `resume` continues
  exactly where a checkpoint left off;
- a non-finite loss stops the run with a StylizeError; the last checkpoint on disk is kept;
- JSON-lines log, tqdm progress bar, preview grids of a few fixed photos.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from stylize.errors import StylizeError
from stylize.train import checkpoint as ckpt
from stylize.train.config import DEFAULT_EPOCHS, RESUME_FIXED, TrainConfig
from stylize.train.data import (
    DataOrder,
    PhotoDataset,
    StepSampler,
    load_crop,
    load_style_image,
    scan_photos,
)
from stylize.train.losses import PerceptualLoss

LOSS_TERMS = ("content", "style", "tv", "total")
PREVIEW_PHOTOS = 4
PREVIEW_STYLES = 6


@dataclass
class TrainResult:
    output: Path | None  # the model file (None when interrupted or not rank 0)
    checkpoint: Path | None  # the last checkpoint written (None if none)
    step: int  # optimizer steps done
    total_steps: int
    epoch: int
    losses: dict[str, float] = field(default_factory=dict)  # last step's weighted terms
    interrupted: str | None = None  # "SIGINT" / "SIGTERM" when stopped by a signal
    seconds: float = 0.0
    images_per_second: float = 0.0
    skipped_files: int = 0


# -- distributed ------------------------------------------------------------------------------


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _setup(config: TrainConfig) -> tuple[DistInfo, torch.device]:
    """Resolve the device; join the process group when launched by torchrun."""
    from stylize.device import resolve_device

    world = int(os.environ.get("WORLD_SIZE", "1"))
    info = DistInfo(
        rank=int(os.environ.get("RANK", "0")),
        world_size=world,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )
    device = resolve_device(config.device)
    if device.type == "cuda" and info.enabled:
        device = torch.device("cuda", info.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if info.enabled and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return info, device


# -- signals ----------------------------------------------------------------------------------


class _StopFlag:
    """SIGINT/SIGTERM -> remember the signal; the loop stops after the current step.

    A second Ctrl-C falls through to Python's default (KeyboardInterrupt).
    """

    def __init__(self) -> None:
        self.signal: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        self.signal = signal.Signals(signum).name
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _worker_init(_: int) -> None:
    # Data workers share the terminal's process group: leave Ctrl-C to the main process.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# -- the training step (shared with scripts/bench_train.py) -----------------------------------


class TrainModule(nn.Module):
    """Network + loss in one module, so that DDP and torch.compile see the whole step.

    forward(images (N, 3, S, S) float [0, 1], style_index (N,) long) -> weighted loss terms.
    """

    def __init__(self, net: nn.Module, loss: PerceptualLoss, num_styles: int, conditional: bool):
        super().__init__()
        self.net, self.loss = net, loss
        self.num_styles, self.conditional = num_styles, conditional

    def forward(self, images: torch.Tensor, style_index: torch.Tensor) -> dict[str, torch.Tensor]:
        weights = None
        if self.conditional:
            # (N, S) one-hot: each sample trains the norm parameters of its own style.
            weights = nn.functional.one_hot(style_index, self.num_styles).to(images.dtype)
        output = self.net(images, weights)  # (N, 3, S, S) in [0, 1]
        return self.loss(output, images, style_index)


class StepRunner:
    """One optimizer step: uint8 batch -> forward under autocast -> scaled backward -> Adam."""

    def __init__(
        self,
        module: nn.Module,
        optimizer: torch.optim.Optimizer,
        device: torch.device,
        dtype: torch.dtype,
        channels_last: bool = False,
        scaler: torch.amp.GradScaler | None = None,
    ):
        self.module, self.optimizer, self.device, self.dtype = module, optimizer, device, dtype
        self.channels_last = channels_last
        self.scaler = scaler or torch.amp.GradScaler(device.type, enabled=False)

    def __call__(self, images: torch.Tensor, style_index: torch.Tensor) -> dict[str, torch.Tensor]:
        x = images.to(self.device, non_blocking=True)
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()  # (N, 3, S, S)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        idx = style_index.to(self.device, non_blocking=True).long()  # (N,)
        self.optimizer.zero_grad(set_to_none=True)
        amp = self.dtype != torch.float32
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=amp):
            terms = self.module(x, idx)
        self.scaler.scale(terms["total"]).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return {k: v.detach() for k, v in terms.items()}


# -- helpers ----------------------------------------------------------------------------------


def _no_buffer_sync() -> dict:
    """DDP option: the loss buffers (style Grams) are equal on every rank; no per-step sync."""
    import inspect

    params = inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters
    if "forward_sync_buffers" in params:  # newer torch: broadcast_buffers is deprecated
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


def style_names_for(paths: list[str]) -> list[str]:
    """Unique, non-numeric style names from the style files' names ("starry_night", ...)."""
    names: list[str] = []
    for path in paths:
        base = Path(path).stem.strip() or "style"
        if base.lstrip("+-").isdigit():
            base = f"style_{base}"
        name, k = base, 2
        while name.casefold() in {n.casefold() for n in names}:
            name, k = f"{base}_{k}", k + 1
        names.append(name)
    return names


def _data_fingerprint(scan) -> dict:
    """The photo list the data order is built on: count and a digest of the relative paths."""
    import hashlib

    digest = hashlib.sha256()
    for path in scan.paths:
        digest.update(path.relative_to(scan.root).as_posix().encode() + b"\0")
    return {"images": len(scan.paths), "sha256": digest.hexdigest()}


def _check_resume(state: dict, config: TrainConfig, names: list[str], source: str) -> None:
    saved = state["config"]
    for key in RESUME_FIXED:
        old, new = saved.get(key), getattr(config, key)
        if key == "styles":
            if state["style_names"] != names:
                raise StylizeError(
                    f"--resume {source}: the checkpoint was trained on styles "
                    f"{', '.join(state['style_names'])}, not {', '.join(names)}; pass the same "
                    "--style images in the same order"
                )
            continue
        if isinstance(new, tuple):
            new = list(new)
        if old != new:
            option = "--" + key.replace("_", "-")
            raise StylizeError(
                f"--resume {source}: the checkpoint was trained with {option} {old}, not {new}; "
                "resume with the same settings"
            )


def _truncate_log(path: Path, step: int) -> None:
    """Before resuming at `step`: drop log lines of later steps (written after the checkpoint
    by the interrupted run), so the log reads as one uninterrupted run."""
    if not path.is_file():
        return
    from stylize.fileio import atomic_write_bytes

    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if int(json.loads(line)["step"]) <= step:
                kept.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by a crash
    atomic_write_bytes(path, "".join(kept).encode())


def _preview_grid(net: nn.Module, photos: torch.Tensor, num_styles: int, dtype) -> torch.Tensor:
    """(3, H', W') float grid: first row the photos, then one row per style (first few)."""
    rows = [photos]
    amp = dtype != torch.float32
    with torch.no_grad(), torch.autocast(photos.device.type, dtype=dtype, enabled=amp):
        for s in range(min(num_styles, PREVIEW_STYLES)):
            weights = None
            if getattr(net, "conditional", False):
                weights = torch.zeros(len(photos), num_styles, device=photos.device)
                weights[:, s] = 1.0
            rows.append(net(photos, weights).float())
    pad = 2
    n, _, h, w = photos.shape
    grid = torch.ones(3, len(rows) * (h + pad) + pad, n * (w + pad) + pad)
    for r, row in enumerate(rows):
        for c in range(n):
            y, x = pad + r * (h + pad), pad + c * (w + pad)
            grid[:, y : y + h, x : x + w] = row[c].clamp(0, 1).cpu()
    return grid


def _save_png(image: torch.Tensor, path: Path) -> None:
    """(3, H, W) float [0, 1] -> PNG, atomically."""
    from stylize.images import encode, from_pixels

    data = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0)  # (H, W, 3)
    encode(from_pixels(data.contiguous()), path, "png")


# -- the loop ---------------------------------------------------------------------------------


def _default_warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def train(
    config: TrainConfig,
    *,
    warn: Callable[[str], None] = _default_warn,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Run one training job (see the module docstring).  `on_step(step, losses)` is called on
    every rank after every step (for tests and embedding)."""
    config.validate()
    info, device = _setup(config)
    try:
        return _Trainer(config, info, device, warn, on_step).run()
    finally:
        if info.enabled and dist.is_initialized():
            dist.destroy_process_group()


class _Trainer:
    def __init__(self, config, info: DistInfo, device, warn, on_step):
        self.config, self.info, self.device = config, info, device
        self.warn = warn if info.is_main else (lambda message: None)
        self.on_step = on_step

    # -- setup --------------------------------------------------------------------------------
    def _data(self):
        cfg = self.config
        scan = scan_photos(cfg.data)
        message = scan.skipped_message()
        if message:
            self.warn(message)
        if len(scan.paths) < cfg.batch_size:
            raise StylizeError(
                f"--data {cfg.data}: {len(scan.paths)} usable image"
                f"{'s' if len(scan.paths) != 1 else ''} found, at least --batch-size "
                f"({cfg.batch_size}) are needed; add photos (searched recursively)"
            )
        return scan

    def _build(self, num_styles: int):
        from stylize.nn.transformer import TransformerNet, preset
        from stylize.nn.vgg import load_vgg

        cfg = self.config
        net = TransformerNet(preset(cfg.preset, num_styles=num_styles))
        style_images = [load_style_image(p, cfg.effective_style_size) for p in cfg.styles]
        vgg = load_vgg(cfg.vgg_weights)
        loss = PerceptualLoss(
            vgg,
            style_images,
            content_layer=cfg.content_layer,
            style_layers=cfg.style_layers,
            content_weight=cfg.content_weight,
            style_weight=cfg.style_weight,
            tv_weight=cfg.tv_weight,
        )
        return net, loss

    def run(self) -> TrainResult:
        cfg, info, device = self.config, self.info, self.device
        from stylize.device import resolve_precision

        dtype = resolve_precision(cfg.precision, device)
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        elif device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)

        scan = self._data()
        names = style_names_for(cfg.styles)
        state = None
        if cfg.resume:
            state = ckpt.load_checkpoint(cfg.resume)
            _check_resume(state, cfg, names, cfg.resume)
            saved = state.get("data")
            if saved and saved != _data_fingerprint(scan):
                self.warn(
                    f"--data {cfg.data}: the photos differ from those of the checkpoint "
                    f"({saved['images']} then, {len(scan.paths)} now); training continues, but "
                    "not in the order of an uninterrupted run"
                )

        net, loss = self._build(len(cfg.styles))
        if state is not None:
            try:
                net.load_state_dict(state["model"])
            except RuntimeError:
                raise StylizeError(
                    f"--resume {cfg.resume}: its network does not match --preset {cfg.preset}"
                ) from None
        net.to(device)
        loss.to(device)
        module = TrainModule(net, loss, net.num_styles, net.conditional)
        if cfg.channels_last:
            module.to(memory_format=torch.channels_last)
        optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr)
        scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
        step = 0
        if state is not None:
            optimizer.load_state_dict(state["optimizer"])
            if state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            ckpt.set_rng_state(state["rng"])
            step = int(state["step"])

        wrapped: nn.Module = module
        if info.enabled:
            ids = [device.index] if device.type == "cuda" else None
            ddp = nn.parallel.DistributedDataParallel
            wrapped = ddp(module, device_ids=ids, **_no_buffer_sync())
        if cfg.compile:
            wrapped = torch.compile(wrapped)
        runner = StepRunner(wrapped, optimizer, device, dtype, cfg.channels_last, scaler)

        order = DataOrder(
            len(scan.paths), cfg.batch_size, cfg.seed, net.num_styles, info.rank, info.world_size
        )
        total = cfg.steps or (cfg.epochs or DEFAULT_EPOCHS) * order.steps_per_epoch
        loader = torch.utils.data.DataLoader(
            PhotoDataset(scan.paths, cfg.image_size),
            batch_sampler=StepSampler(order, step, total),
            num_workers=cfg.workers,
            pin_memory=device.type == "cuda",
            worker_init_fn=_worker_init if cfg.workers else None,
        )
        loop = _Loop(self, net, optimizer, scaler, order, scan, names, dtype)
        with _StopFlag() as stop:
            return loop.run(runner, loader, step, total, stop)


class _Loop:
    """The step loop with its side effects (log, progress bar, checkpoints, previews)."""

    def __init__(self, trainer: _Trainer, net, optimizer, scaler, order, scan, names, dtype):
        self.t, self.cfg, self.info = trainer, trainer.config, trainer.info
        self.net, self.optimizer, self.scaler = net, optimizer, scaler
        self.order, self.scan, self.names, self.dtype = order, scan, names, dtype
        self.checkpoint_written: Path | None = None
        self.checkpoint_step = -1
        self.bad_files: set[str] = set()

    def checkpoint(self, step: int, losses: dict[str, float]) -> None:
        if not self.info.is_main:
            return
        cfg = self.cfg
        ckpt.save_checkpoint(
            cfg.checkpoint_path,
            {
                "config": cfg.to_dict(),
                "net_config": self.net.config.to_dict(),
                "style_names": list(self.names),
                "model": {k: v.detach().cpu() for k, v in self.net.state_dict().items()},
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
                "rng": ckpt.rng_state(),
                "step": step,
                "epoch": step // self.order.steps_per_epoch,
                "world_size": self.info.world_size,
                "losses": dict(losses),
                "data": _data_fingerprint(self.scan),
            },
        )
        self.checkpoint_written, self.checkpoint_step = cfg.checkpoint_path, step

    def preview(self, photos: torch.Tensor) -> None:
        grid = _preview_grid(self.net, photos, self.net.num_styles, self.dtype)
        _save_png(grid, self.cfg.preview_path)

    def _reduce(self, terms: dict[str, torch.Tensor], stop: bool) -> tuple[dict[str, float], bool]:
        """Loss terms averaged over ranks (one all-reduce, carrying the stop flag too)."""
        values = torch.stack([terms[k].float() for k in LOSS_TERMS])
        if self.info.enabled:
            flag = torch.tensor([1.0 if stop else 0.0], device=values.device)
            values = torch.cat([values, flag])
            dist.all_reduce(values)
            values[: len(LOSS_TERMS)] /= self.info.world_size
            stop = bool(values[-1] > 0)
        floats = values[: len(LOSS_TERMS)].tolist()
        return dict(zip(LOSS_TERMS, floats, strict=True)), stop

    def run(self, runner, loader, step, total, stop) -> TrainResult:
        cfg, info = self.cfg, self.info
        main = info.is_main
        log = None
        if main and cfg.log:
            if cfg.resume:
                _truncate_log(Path(cfg.log), step)
            Path(cfg.log).parent.mkdir(parents=True, exist_ok=True)
            log = open(cfg.log, "a" if cfg.resume else "w", encoding="utf-8")  # noqa: SIM115
        photos = None
        if main and cfg.preview_every:
            photos = self._preview_photos().to(self.t.device)
        show = cfg.progress if cfg.progress is not None else sys.stderr.isatty()
        from tqdm import tqdm

        bar = tqdm(
            total=total,
            initial=step,
            unit="step",
            disable=not (main and show),
            dynamic_ncols=True,
            file=sys.stderr,
        )
        start_step, start = step, time.perf_counter()
        last_step, last_time = step, start
        losses: dict[str, float] = {}
        interrupted = None
        try:
            for images, style_index, failed in loader:
                self._note_failed(failed)
                terms = runner(images, style_index)
                step += 1
                losses, stopping = self._reduce(terms, stop.signal is not None)
                if not all(math.isfinite(v) for v in losses.values()):
                    self._diverged(step, losses)
                if self.t.on_step is not None:
                    self.t.on_step(step, losses)
                if not info.enabled and stop.signal is not None:
                    stopping = True  # (with DDP, ranks agree on stopping through _reduce)
                if step % cfg.log_every == 0 or step == total:
                    now = time.perf_counter()
                    ips = (step - last_step) * cfg.batch_size / max(now - last_time, 1e-9)
                    last_step, last_time = step, now
                    epoch = (step - 1) // self.order.steps_per_epoch + 1
                    if log is not None:
                        record = {"step": step, "epoch": epoch, **losses}
                        record.update(lr=self.optimizer.param_groups[0]["lr"], images_per_s=ips)
                        log.write(json.dumps(record) + "\n")
                        log.flush()
                    bar.set_postfix_str(
                        f"epoch {epoch} {ips:.1f} img/s content {losses['content']:.4g} "
                        f"style {losses['style']:.4g} tv {losses['tv']:.3g}",
                        refresh=False,
                    )
                    bar.update(step - bar.n)
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                    self.checkpoint(step, losses)
                if photos is not None and (step % cfg.preview_every == 0 or step == total):
                    self.preview(photos)
                if stopping and step < total:  # (at the last step: just finish)
                    interrupted = stop.signal or "SIGTERM"  # another rank got the signal
                    break
        finally:
            bar.close()
            if log is not None:
                log.close()
        if interrupted is None and stop.signal is not None and step < total:
            interrupted = stop.signal  # the signal came between the last step and the end
        if interrupted is not None:
            if self.checkpoint_step != step:
                self.checkpoint(step, losses)
            return self._result(None, step, total, losses, interrupted, start, start_step)
        if cfg.checkpoint_every and self.checkpoint_step != step:
            self.checkpoint(step, losses)  # a final checkpoint, so the run can be extended
        output = self._save_model(step, total, losses) if main else None
        if info.enabled:
            dist.barrier()
        return self._result(output, step, total, losses, None, start, start_step)

    def _preview_photos(self) -> torch.Tensor:
        """(P, 3, S, S) float [0, 1]: center crops of the first photos that decode."""
        crops = []
        for path in self.scan.paths:
            try:
                crops.append(load_crop(path, self.cfg.image_size))
            except Exception:  # reported when training reaches it
                continue
            if len(crops) == PREVIEW_PHOTOS:
                break
        if not crops:
            raise StylizeError(f"--data {self.cfg.data}: none of the photos can be decoded")
        return torch.stack(crops).float().div(255)

    def _note_failed(self, failed: list[str]) -> None:
        new = sorted({p for item in failed for p in item.split("\n") if p} - self.bad_files)
        if new:
            self.bad_files.update(new)
            self.t.warn(
                f"--data: could not decode {', '.join(new)}; used the next image instead "
                f"({len(self.bad_files)} such file{'s' if len(self.bad_files) != 1 else ''} so far)"
            )

    def _diverged(self, step: int, losses: dict[str, float]) -> None:
        bad = ", ".join(f"{k}={v}" for k, v in losses.items() if not math.isfinite(v))
        good = self.checkpoint_written or self.cfg.resume  # this run's, else the one resumed
        kept = (
            f"the last good checkpoint {good} is kept (resume with --resume {good})"
            if good
            else "no checkpoint had been written yet (use --checkpoint-every N)"
        )
        raise StylizeError(
            f"training diverged at step {step}: loss {bad}; {kept}; try a lower --lr, smaller "
            "--style-weight, or --precision fp32"
        )

    def _save_model(self, step: int, total: int, losses: dict[str, float]) -> Path:
        from stylize import __version__
        from stylize.checkpoint import save_model

        cfg = self.cfg
        settings = cfg.to_dict()
        for key in ("extra", "progress", "resume", "log", "preview", "checkpoint"):
            settings.pop(key, None)
        metadata = {
            "training": settings,
            "steps": step,
            "epochs": step / self.order.steps_per_epoch,
            "images": len(self.scan.paths),
            "world_size": self.info.world_size,
            "final_losses": losses,
            "stylize": __version__,
            "torch": str(torch.__version__),  # TorchVersion is a str subclass: plain str
            **cfg.extra,
        }
        save_model(cfg.output, self.net, self.names, metadata)
        return Path(cfg.output)

    def _result(self, output, step, total, losses, interrupted, start, start_step) -> TrainResult:
        seconds = time.perf_counter() - start
        return TrainResult(
            output=output,
            checkpoint=self.checkpoint_written,
            step=step,
            total_steps=total,
            epoch=step // self.order.steps_per_epoch,
            losses=losses,
            interrupted=interrupted,
            seconds=seconds,
            images_per_second=(step - start_step) * self.cfg.batch_size / max(seconds, 1e-9),
            skipped_files=len(self.scan.skipped) + len(self.bad_files),
        )
