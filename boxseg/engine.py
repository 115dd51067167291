"""One training loop for both trainers: device, optimiser, poly LR, AMP, progress, metrics."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from boxseg import distributed
from boxseg.errors import BoxsegError
from boxseg.io import append_jsonl, atomic_write_bytes, load_torch, save_torch


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
    channels_last: bool = False
    compile: bool = False
    log_every: int = 10
    checkpoint_every: int = 200  # steps between RUN/last.pt saves (0: only at the end)
    resume: bool = False  # continue from RUN/last.pt if it exists
    overwrite: bool = False  # start over in a run directory that holds a run already

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        if not self.lr > 0:  # also refuses NaN
            raise BoxsegError(f"--lr {self.lr}: must be positive")
        if self.batch_size < 2:
            raise BoxsegError(
                f"--batch-size {self.batch_size}: must be at least 2 (batch norm "
                "layers need two images a batch in training)"
            )
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
        if self.workers < 0:
            raise BoxsegError(
                f"--workers {self.workers}: must be 0 (read in the main process) or more"
            )
        if self.resume and self.overwrite:
            raise BoxsegError(
                "--resume and --overwrite: give one (continue the run, or start it over)"
            )
        if self.epochs is not None and self.epochs < 1:
            raise BoxsegError(f"--epochs {self.epochs}: must be at least 1")


def resolve_device(name: str) -> torch.device:
    """The device `--device` names: auto = cuda when available, else cpu; a one-line error for
    an unavailable or unknown one. Only resolves: the commands that run over ranks join the
    process group themselves (`distributed.join_group`)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BoxsegError(f"--device {name}: no CUDA device is available")
    if name != "cpu" and not name.startswith("cuda"):
        raise BoxsegError(f"--device {name}: choose auto, cpu or cuda")
    return torch.device(name)


def total_iters(cfg: TrainConfig, batches) -> int:
    """--epochs (over F, i.e. over the main batch stream) overrides --iters."""
    return cfg.epochs * len(batches) if cfg.epochs else cfg.iters


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def poly_lr(base_lr: float, step: int, total: int, power: float = 0.9) -> float:
    """DeepLab's poly schedule."""
    return base_lr * (1 - step / max(total, 1)) ** power


def to_device(obj, device: torch.device, channels_last: bool = False):
    """Move a batch (tensors in nested dicts; None allowed) to the device; 4-D tensors
    (images, boxes, logits) to channels_last memory format when asked."""
    if isinstance(obj, dict):
        return {k: to_device(v, device, channels_last) for k, v in obj.items()}
    if not isinstance(obj, torch.Tensor):
        return obj
    if channels_last and obj.dim() == 4:
        return obj.to(device, non_blocking=True, memory_format=torch.channels_last)
    return obj.to(device, non_blocking=True)


StepFn = Callable[[nn.Module, dict, int], tuple[torch.Tensor, dict, int]]


class TrainStep(nn.Module):
    """One training step as a module's forward, so DDP sees every network it must synchronise:
    forward(batch, step) = step_fn(nets, batch, step) -> (loss, logs, n_images)."""

    def __init__(self, nets: nn.Module, step_fn: StepFn):
        super().__init__()
        self.nets, self.step_fn = nets, step_fn

    def forward(self, batch: dict, step: int):
        return self.step_fn(self.nets, batch, step)


TRAIN_STATE = "boxseg-train-state-v1"


def save_train_state(path: Path, nets, optimizer, scaler, step: int, iters: int) -> None:
    """RUN/last.pt: everything needed to continue after `step` steps. The data position, alpha
    and conv stage are functions of the step, so the step is all they need."""
    save_torch(
        path,
        {
            "format": TRAIN_STATE,
            "step": step,
            "iters": iters,
            "model": nets.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        },
    )


def load_train_state(path: Path, nets, optimizer, scaler, iters: int) -> int:
    """Restore RUN/last.pt into nets, optimizer and scaler; return the step to continue from."""
    state = load_torch(path, "training state")
    if not isinstance(state, dict) or state.get("format") != TRAIN_STATE:
        raise BoxsegError(f"{path}: not a boxseg training state")
    if state["iters"] != iters:
        raise BoxsegError(f"{path}: saved for a {state['iters']}-step run, this one has {iters}")
    try:
        nets.load_state_dict(state["model"])
    except RuntimeError as e:
        raise BoxsegError(f"{path}: saved for another model ({str(e).splitlines()[0]})") from e
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["torch_rng"])
    if state.get("cuda_rng") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return int(state["step"])


def keep_metrics_until(path: Path, step: int) -> None:
    """Drop metrics logged after the checkpoint a run resumes from (they will be logged again),
    and a torn last line; rewritten atomically."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("step", 0) <= step and "loss" in record:
            kept.append(line)
    atomic_write_bytes(path, "".join(f"{x}\n" for x in kept).encode())


def prepare_nets(nets: nn.Module, cfg: TrainConfig, device: torch.device) -> nn.Module:
    """channels_last, SyncBatchNorm (several CUDA processes only) and torch.compile."""
    if cfg.channels_last:
        nets.to(memory_format=torch.channels_last)
    if distributed.world() > 1 and device.type == "cuda":
        nets = nn.SyncBatchNorm.convert_sync_batchnorm(nets)  # CPU (gloo) keeps plain BN
    if cfg.compile:
        for child in nets.children():
            child.compile()  # in place: state_dict keys stay unchanged
    return nets


def checked_losses(
    losses: list[tuple[int, torch.Tensor]],
    description: str,
    state_path: Path,
    extra: list[torch.Tensor] | None = None,
) -> tuple[list[float], list[float]]:
    """The losses logged since the last check, as their means over ranks (one all-reduce for
    them all), and `extra` (a window's log sums, this rank's), brought to the host in one
    sync; a clear error naming the first step whose loss was not finite (on every rank, as
    they all see the same means). Checked before every checkpoint, so RUN/last.pt never holds
    a state trained through a NaN."""
    extra = extra or []
    means = distributed.mean_over_ranks(torch.stack([v.float() for _, v in losses]))
    values = torch.cat([means, *(v.float().reshape(1) for v in extra)]).cpu()
    losses_at = values[: len(losses)]
    finite = torch.isfinite(losses_at)
    if not finite.all():
        k = int((~finite).nonzero()[0])
        raise BoxsegError(
            f"{description}: loss became {values[k].item()} at step {losses[k][0]}; try a lower "
            "--lr" + (f" ({state_path} holds the last good state)" if state_path.is_file() else "")
        )
    return losses_at.tolist(), values[len(losses) :].tolist()


@dataclass
class LogWindow:
    """What one metrics record reports of the steps since the last one: the mean loss, the
    mean of each tensor log (loss_f, loss_w, ...; over the steps that had it), the sum of the
    `skipped_*` counts, and plain values (alpha, stage) as the last step left them. Tensor
    logs are summed on the device; they reach the host with the losses, in the one sync a
    record already needs."""

    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    last: dict[str, float] = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)  # host values of the checked losses

    def add(self, logs: dict) -> None:
        """One step's logs (no host sync)."""
        for k, v in logs.items():
            if not isinstance(v, torch.Tensor):
                self.last[k] = float(v)
                continue
            v = v.detach().float()
            self.sums[k] = self.sums[k] + v if k in self.sums else v
            self.counts[k] = self.counts.get(k, 0) + 1

    def record(self, sums: list[float]) -> dict[str, float]:
        """The window's values, given the host values of `sums` (in their order)."""
        out = {"loss": sum(self.losses) / max(len(self.losses), 1)}
        for (k, n), total in zip(self.counts.items(), sums, strict=True):
            out[k] = total if k.startswith("skipped_") else total / n
        return out | self.last


def refuse_under_ddp(nets: nn.Module) -> None:
    """One line, before DDP's own traceback, for a net that says it cannot train under DDP
    (`ddp_refusal`: smp's pspnet leaves encoder stages without gradients)."""
    refusals = sorted({getattr(m, "ddp_refusal", "") for m in nets.modules()} - {""})
    if refusals:
        raise BoxsegError(refusals[0])


def fit(
    nets: nn.Module,
    step_fn: StepFn,
    next_batch: Callable[[int], dict],
    cfg: TrainConfig,
    iters: int,
    device: torch.device,
    run_dir: Path,
    description: str,
    quiet: bool = False,
) -> dict:
    """Train `nets` for `iters` steps: next_batch(step) -> batch; step_fn(nets, batch, step) ->
    (loss, logs, n_images).

    Under torchrun the step runs through DistributedDataParallel and only rank 0 logs and
    writes. Logs loss, lr and images/s to RUN/metrics.jsonl every `log_every` steps: the
    loss and the step's tensor logs (loss_f, loss_w, ...) as their means over those steps,
    logs named `skipped_*` (such as all-void F batches) summed (`LogWindow`); saves
    RUN/last.pt every `checkpoint_every` steps (atomically) and continues from it with
    `resume` (without one, a resumed run starts over, and so does its metrics.jsonl); stops
    with a clear error on a NaN/Inf loss, keeping the last good RUN/last.pt.
    The losses stay on the device between logged (or saved) steps: one host sync (and under
    torchrun one all-reduce of the losses) per `log_every` steps, not one per step; a
    non-finite loss is still reported at its step. One exception: with `--amp fp16`,
    GradScaler's step reads its inf/NaN check on the host every step (dynamic loss scaling
    cannot skip a step without it); bf16 and off have none.
    """
    nets.train()
    optimizer = make_optimizer(nets, cfg)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
    metrics_path, state_path = run_dir / "metrics.jsonl", run_dir / "last.pt"
    main = distributed.is_main()
    start = 0
    if cfg.resume and state_path.is_file():
        start = load_train_state(state_path, nets, optimizer, scaler, iters)
    if main:  # the lines after `start` (all of them without a checkpoint) will be logged again
        keep_metrics_until(metrics_path, start)
    train_step: nn.Module = TrainStep(prepare_nets(nets, cfg, device), step_fn)
    if distributed.world() > 1:
        refuse_under_ddp(nets)
        ids = [device.index] if device.type == "cuda" else None
        train_step = DistributedDataParallel(train_step, device_ids=ids)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.3f}"),
        TextColumn("{task.fields[ips]:.1f} img/s"),
        TimeRemainingColumn(),
    )
    window = LogWindow()
    losses: list[tuple[int, torch.Tensor]] = []  # (step, loss) since the last host sync
    mean_loss = float("nan")
    t0, seen = time.perf_counter(), 0
    hide = quiet or not main or os.environ.get("BOXSEG_QUIET") == "1"
    with Progress(*columns, disable=hide) as bar:
        task = bar.add_task(description, total=iters, completed=start, loss=float("nan"), ips=0.0)
        for step in range(start, iters):
            lr = poly_lr(cfg.lr, step, iters)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = to_device(next_batch(step), device, cfg.channels_last)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss, logs, n = train_step(batch, step)
            window.add(logs)
            losses.append((step, loss.detach()))  # no host sync: averaged over ranks when checked
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            seen += n * distributed.world()
            ips = seen / max(time.perf_counter() - t0, 1e-9)
            every = cfg.checkpoint_every
            logging = (step + 1) % cfg.log_every == 0 or step + 1 == iters
            saving = (every and (step + 1) % every == 0) or step + 1 == iters
            if logging or saving:  # the one host sync: losses since the last, checked
                sums = list(window.sums.values()) if logging else []
                checked, sums = checked_losses(losses, description, state_path, sums)
                window.losses += checked
                mean_loss, losses = sum(window.losses) / len(window.losses), []
            bar.update(task, advance=1, loss=mean_loss, ips=ips)
            if logging:
                record = {"step": step + 1} | window.record(sums) | {"lr": lr, "img_per_s": ips}
                if main:
                    append_jsonl(metrics_path, record)
                window = LogWindow()
            if main and saving:
                save_train_state(state_path, nets, optimizer, scaler, step + 1, iters)
    nets.eval()
    distributed.assert_in_sync(nets)  # also a barrier: rank 0's last checkpoint is written
    return {
        "seconds": time.perf_counter() - t0,
        "img_per_s": seen / max(time.perf_counter() - t0, 1e-9),
    }
