"""One training loop for both trainers: device, optimiser, poly LR, AMP, progress, metrics."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch.utils.data import DataLoader, Dataset

from boxseg.errors import BoxsegError
from boxseg.io import append_jsonl


@dataclass(frozen=True)
class TrainConfig:
    """The training budget and optimiser settings shared by train-anc and train-primary."""

    iters: int = 2000
    epochs: int | None = None  # if set, overrides iters: epochs over F
    batch_size: int = 8
    crop: int = 321
    scale_min: float = 0.5
    scale_max: float = 2.0
    lr: float = 0.01
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    seed: int = 0
    device: str = "auto"
    workers: int = 0
    amp: str = "off"
    log_every: int = 10

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        if self.lr <= 0:
            raise BoxsegError(f"--lr {self.lr}: must be positive")
        if self.batch_size < 1:
            raise BoxsegError(f"--batch-size {self.batch_size}: must be at least 1")
        if self.crop < 16:
            raise BoxsegError(f"--crop {self.crop}: must be at least 16 pixels")
        if not 0 < self.scale_min <= self.scale_max:
            raise BoxsegError(
                f"--scale-min/--scale-max {self.scale_min}/{self.scale_max}: need 0 < min <= max"
            )
        if self.iters < 1 and not self.epochs:
            raise BoxsegError(f"--iters {self.iters}: must be at least 1")
        if self.optimizer not in ("sgd", "adamw"):
            raise BoxsegError(f"--optimizer {self.optimizer}: choose sgd or adamw")
        if self.amp not in ("off", "bf16", "fp16"):
            raise BoxsegError(f"--amp {self.amp}: choose off, bf16 or fp16")


def resolve_device(name: str) -> torch.device:
    """auto = cuda when available, else cpu; asking for cuda without one is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BoxsegError(f"--device {name}: no CUDA device is available")
    if name != "cpu" and not name.startswith("cuda"):
        raise BoxsegError(f"--device {name}: choose auto, cpu or cuda")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)


def make_loader(ds: Dataset, batch_size: int, workers: int, shuffle: bool = True) -> DataLoader:
    """A shuffling loader that drops the last partial batch (BatchNorm needs >1 sample)."""
    if len(ds) == 0:
        raise BoxsegError("nothing to train on: the set is empty")
    return DataLoader(
        ds,
        batch_size=min(batch_size, len(ds)),
        shuffle=shuffle,
        drop_last=True,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0,
    )


def forever(loader: DataLoader) -> Iterator:
    """Cycle through a loader epoch after epoch."""
    while True:
        yield from loader


def total_iters(cfg: TrainConfig, loader: DataLoader) -> int:
    return cfg.epochs * len(loader) if cfg.epochs else cfg.iters


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def poly_lr(base_lr: float, step: int, total: int, power: float = 0.9) -> float:
    """DeepLab's poly schedule."""
    return base_lr * (1 - step / max(total, 1)) ** power


def to_device(obj, device: torch.device):
    """Move a batch (tensors in nested dicts; None allowed) to the device."""
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    return obj.to(device, non_blocking=True) if isinstance(obj, torch.Tensor) else obj


StepFn = Callable[[dict, int], tuple[torch.Tensor, dict, int]]


def fit(
    model: torch.nn.Module,
    step_fn: StepFn,
    batches: Iterator,
    cfg: TrainConfig,
    iters: int,
    device: torch.device,
    metrics_path: Path,
    description: str,
    quiet: bool = False,
) -> dict:
    """Train for `iters` steps. step_fn(batch_on_device, step) -> (loss, logs, n_images).

    Logs loss, lr and images/s to metrics.jsonl every `log_every` steps; stops with a clear
    error on a NaN/Inf loss.
    """
    model.train()
    optimizer = make_optimizer(model, cfg)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.3f}"),
        TextColumn("{task.fields[ips]:.1f} img/s"),
        TimeRemainingColumn(),
    )
    logs: dict = {}
    t0, seen = time.perf_counter(), 0
    with Progress(*columns, disable=quiet or os.environ.get("BOXSEG_QUIET") == "1") as bar:
        task = bar.add_task(description, total=iters, loss=float("nan"), ips=0.0)
        for step in range(iters):
            lr = poly_lr(cfg.lr, step, iters)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = to_device(next(batches), device)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss, logs, n = step_fn(batch, step)
            if not math.isfinite(loss.item()):
                raise BoxsegError(
                    f"{description}: loss became {loss.item()} at step {step}; try a lower --lr"
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            seen += n
            ips = seen / max(time.perf_counter() - t0, 1e-9)
            bar.update(task, advance=1, loss=loss.item(), ips=ips)
            if (step + 1) % cfg.log_every == 0 or step + 1 == iters:
                record = {"step": step + 1, "loss": loss.item(), "lr": lr, "img_per_s": ips}
                append_jsonl(metrics_path, record | {k: float(v) for k, v in logs.items()})
    model.eval()
    return {
        "seconds": time.perf_counter() - t0,
        "img_per_s": seen / max(time.perf_counter() - t0, 1e-9),
    }
