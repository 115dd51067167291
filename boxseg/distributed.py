"""torch.distributed when launched by torchrun; a plain single process otherwise.

Every helper works without a process group (world size 1), so single-process runs never need
one. Under torchrun (WORLD_SIZE > 1) `join_group` joins the group: nccl on CUDA, gloo on CPU.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def world() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    return rank() == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def join_group(device: torch.device) -> torch.device:
    """Under torchrun, join the process group (nccl on CUDA, gloo on CPU) and return this
    rank's device (CUDA: the one of its LOCAL_RANK); otherwise `device` as it is. Called by
    the commands that share their work over ranks: the trainers and gen-logits."""
    if launched_by_torchrun():
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        if not active():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def barrier() -> None:
    if active():
        dist.barrier()


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """The mean of a tensor over all ranks (the tensor itself in a single process)."""
    if not active():
        return value
    value = value.detach().clone()
    dist.all_reduce(value)
    return value / world()


def assert_in_sync(module: torch.nn.Module) -> None:
    """Check that every rank holds the same parameters (what DDP promises) before rank 0 saves."""
    if not active():
        return
    total = torch.stack([p.detach().double().sum() for p in module.parameters()]).sum()
    low, high = total.clone().reshape(1), total.clone().reshape(1)
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    if low.item() != high.item():
        raise RuntimeError(f"ranks ended with different weights ({low.item()} != {high.item()})")


def cleanup() -> None:
    if active():
        dist.destroy_process_group()
