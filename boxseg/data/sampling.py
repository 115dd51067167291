"""Resumable, sharded, endless training batches.

Each epoch is a fresh permutation of the set (seeded by (seed, epoch)), split over ranks the way
DistributedSampler does (rank r takes every world-th index). Every item carries its own
augmentation seed, derived from (seed, epoch, index), so the batch at training step s, and its
augmentation, depend only on s: not on the number of DataLoader workers, and not on whether the
run was interrupted. That is what makes `--resume` exact mid-epoch, which DistributedSampler
(whose position cannot be set) does not allow.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from itertools import count

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from boxseg import distributed
from boxseg.box_constraint import pad_boxes
from boxseg.errors import BoxsegError


def item_seed(seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence((seed, epoch, index)).generate_state(1)[0])


class ShardedBatches(Sampler):
    """Endless batches of (index, augmentation seed) keys for one rank, from batch `start` on."""

    def __init__(
        self, size: int, batch_size: int, seed: int, rank: int = 0, world: int = 1, start: int = 0
    ):
        self.per_rank = size // world
        if self.per_rank < 2:  # batch norm layers need two images a batch in training
            raise BoxsegError(
                f"too little to train on: {size} images for {world} processes; "
                "a training batch needs at least 2 (batch norm)"
            )
        self.size, self.seed, self.rank, self.world, self.start = size, seed, rank, world, start
        self.batch_size = min(batch_size, self.per_rank)
        self.per_epoch = self.per_rank // self.batch_size  # the partial batch is dropped

    def __len__(self) -> int:
        """Batches per epoch (the iterator itself never ends)."""
        return self.per_epoch

    def epoch_order(self, epoch: int) -> np.ndarray:
        perm = np.random.default_rng((self.seed, epoch)).permutation(self.size)
        return perm[: self.per_rank * self.world][self.rank :: self.world]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order, order_epoch = None, -1
        for b in count(self.start):
            epoch, k = divmod(b, self.per_epoch)
            if epoch != order_epoch:
                order, order_epoch = self.epoch_order(epoch), epoch
            chunk = order[k * self.batch_size : (k + 1) * self.batch_size]
            yield [(int(i), item_seed(self.seed, epoch, int(i))) for i in chunk]


RAGGED = ("box_bounds", "box_labels")  # one row per box: padded to the batch's most boxes


def collate(items: list[dict]) -> dict:
    """torch's default collate, but the items' box lists (`RAGGED`) are padded (labels -1)."""
    if not isinstance(items[0], dict) or not any(k in items[0] for k in RAGGED):
        return default_collate(items)
    ragged = {k: [it[k] for it in items] for k in RAGGED}
    out = default_collate([{k: v for k, v in it.items() if k not in RAGGED} for it in items])
    out["box_bounds"], out["box_labels"] = pad_boxes(ragged["box_bounds"], ragged["box_labels"])
    return out


class Batches:
    """`batches(step)` -> the collated batch for training step `step`.

    The DataLoader is made on the first call, starting at that step (minus `offset`, for a set
    that joins training later), so a resumed run picks up exactly where it stopped.
    `batch_size` is what each step delivers (per process): the `requested` size, or this
    process's whole share of a smaller set (`ShardedBatches`).
    """

    def __init__(self, ds: Dataset, batch_size: int, workers: int, seed: int, offset: int = 0):
        if len(ds) == 0:
            raise BoxsegError("nothing to train on: the set is empty")
        self.ds, self.workers, self.seed, self.offset = ds, workers, seed, offset
        self.sampler = ShardedBatches(
            len(ds), batch_size, seed, distributed.rank(), distributed.world()
        )
        self.requested, self.batch_size = batch_size, self.sampler.batch_size
        self._it: Iterator | None = None
        self._next = 0

    def __len__(self) -> int:
        return len(self.sampler)

    def __call__(self, step: int) -> dict:
        if self._it is None:
            s = self.sampler
            sampler = ShardedBatches(
                s.size, self.batch_size, s.seed, s.rank, s.world, step - self.offset
            )
            own_rng = torch.Generator().manual_seed(s.seed)  # leaves the global RNG untouched
            loader = DataLoader(
                self.ds,
                batch_sampler=sampler,
                num_workers=self.workers,
                pin_memory=torch.cuda.is_available(),
                generator=own_rng,
                collate_fn=collate,
            )
            self._it = iter(loader)
            self._next = step
        if step != self._next:
            raise RuntimeError(f"batches asked for step {step}, expected {self._next}")
        self._next += 1
        return next(self._it)


def warn_if_short(batches: Batches, what: str, option: str) -> None:
    """A warning on stderr (shown even when quiet; once, from the main process) when `what`'s
    set is smaller than the batch `option` asked for: each step then takes fewer images."""
    s = batches.sampler
    if batches.batch_size >= batches.requested or not distributed.is_main():
        return
    held = f"{s.size} images" if s.world == 1 else f"{s.per_rank} images per process"
    print(
        f"boxseg: warning: {what} has {held}, fewer than {option} {batches.requested}: each "
        f"step takes {batches.batch_size} {what} images",
        file=sys.stderr,
    )


Stream = Callable[[int], dict]


def mixed(full: Stream, weak: Stream | None, weak_from: int = 0) -> Stream:
    """next_batch(step): {"f": an F batch, "w": a W batch from step `weak_from` on (conv's
    stage 3), else None}."""

    def next_batch(step: int) -> dict:
        use_weak = weak is not None and step >= weak_from
        return {"f": full(step), "w": weak(step) if use_weak else None}

    return next_batch
