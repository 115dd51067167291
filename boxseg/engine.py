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
from boxseg.io import append_jsonl, save_torch


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
    checkpoint_every: int = 200  # steps between RUN/last.pt saves (0: only at the end)
    resume: bool = False  # continue from RUN/last.pt if it exists

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        if not self.lr > 0:  # also refuses NaN
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
        if self.checkpoint_every < 0:
            raise BoxsegError(f"--checkpoint-every {self.checkpoint_every}: must be >= 0")
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


TRAIN_STATE = "boxseg-train-state-v1"


def save_train_state(path: Path, model, optimizer, scaler, step: int, iters: int) -> None:
    """RUN/last.pt: everything needed to continue training after `step` steps."""
    save_torch(path, {
        "format": TRAIN_STATE, "step": step, "iters": iters, "model": model.state_dict(),
        "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
        "torch_rng": torch.get_rng_state(),
    })  # fmt: skip


def load_train_state(path: Path, model, optimizer, scaler, iters: int) -> int:
    """Restore RUN/last.pt into model, optimizer and scaler; return the step to continue from."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a torn or foreign file
        raise BoxsegError(f"{path}: unreadable training state ({str(e).splitlines()[0]})") from e
    if not isinstance(state, dict) or state.get("format") != TRAIN_STATE:
        raise BoxsegError(f"{path}: not a boxseg training state")
    if state["iters"] != iters:
        raise BoxsegError(f"{path}: saved for a {state['iters']}-step run, this one has {iters}")
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise BoxsegError(f"{path}: saved for another model ({str(e).splitlines()[0]})") from e
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"])


def fit(
    model: torch.nn.Module,
    step_fn: StepFn,
    next_batch: Callable[[int], dict],
    cfg: TrainConfig,
    iters: int,
    device: torch.device,
    run_dir: Path,
    description: str,
    quiet: bool = False,
) -> dict:
    """Train for `iters` steps: next_batch(step) -> batch; step_fn(batch_on_device, step) ->
    (loss, logs, n_images).

    Logs loss, lr and images/s to RUN/metrics.jsonl every `log_every` steps; saves RUN/last.pt
    every `checkpoint_every` steps (atomically) and continues from it with `resume`; stops
    with a clear error on a NaN/Inf loss, leaving the last good RUN/last.pt in place.
    """
    model.train()
    optimizer = make_optimizer(model, cfg)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
    metrics_path, state_path = run_dir / "metrics.jsonl", run_dir / "last.pt"
    start = 0
    if cfg.resume and state_path.is_file():
        start = load_train_state(state_path, model, optimizer, scaler, iters)
    elif not cfg.resume:
        metrics_path.unlink(missing_ok=True)
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
        task = bar.add_task(description, total=iters, completed=start, loss=float("nan"), ips=0.0)
        for step in range(start, iters):
            lr = poly_lr(cfg.lr, step, iters)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = to_device(next_batch(step), device)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss, logs, n = step_fn(batch, step)
            if not math.isfinite(loss.item()):
                raise BoxsegError(
                    f"{description}: loss became {loss.item()} at step {step}; try a lower --lr"
                    + (f" ({state_path} holds the last good state)" if state_path.is_file() else "")
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
            every = cfg.checkpoint_every
            if (every and (step + 1) % every == 0) or step + 1 == iters:
                save_train_state(state_path, model, optimizer, scaler, step + 1, iters)
    model.eval()
    return {
        "seconds": time.perf_counter() - t0,
        "img_per_s": seen / max(time.perf_counter() - t0, 1e-9),
    }
