"""torch Datasets for training: F (image, mask, box tensor) and W (image, stored logits).

The W set reads images and the logits store only: it has no way to reach W's masks or boxes.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from boxseg.box_constraint import BiasMaker
from boxseg.data.boxes import BoxSpec, rasterize_boxes
from boxseg.data.formats import SegDataset, load_full, load_weak
from boxseg.data.transforms import (
    Aligned,
    apply,
    cells_spanned,
    crop_coords,
    draw_params,
    to_tensor,
    window,
)
from boxseg.errors import BoxsegError
from boxseg.store import InMemoryLogits, LogitsStore


def item_key(key: int | tuple[int, int]) -> tuple[int, np.random.Generator]:
    """(index, augmentation generator) for a dataset key: an index with its own seed, as
    `ShardedBatches` yields them, or a bare index (then seeded from torch's RNG)."""
    if isinstance(key, tuple):
        return int(key[0]), np.random.default_rng(int(key[1]))
    return int(key), np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))


class AugmentSpec:
    """Crop size, scale range and flip shared by every training set."""

    def __init__(
        self, crop: int, scale_range: tuple[float, float] = (0.5, 2.0), hflip: bool = True
    ):
        self.crop, self.scale_range, self.hflip = crop, scale_range, hflip

    def draw(self, rng: np.random.Generator, height: int, width: int):
        return draw_params(rng, height, width, self.crop, self.scale_range, self.hflip)


class FullTrainSet(Dataset):
    """F: augmented image + mask (+ the box tensor for the ancillary net)."""

    def __init__(
        self,
        ds: SegDataset,
        split: str,
        ids: list[str],
        box_spec: BoxSpec,
        aug: AugmentSpec,
        with_boxes: bool,
        mean,
        std,
        bias: BiasMaker | None = None,
    ):
        self.ds, self.split, self.ids, self.box_spec = ds, split, ids, box_spec
        self.aug, self.with_boxes, self.mean, self.std = aug, with_boxes, mean, std
        self.bias = bias  # box_constraint.BiasMaker: also the crop's box-constraint bias

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        i, rng = item_key(key)
        s = load_full(self.ds, self.split, self.ids[i], self.box_spec, self.with_boxes)
        a = apply(
            Aligned(s.image, s.mask, s.boxes, s.labels), self.aug.draw(rng, *s.size), self.aug.crop
        )
        out = {
            "image": to_tensor(a.image, self.mean, self.std),
            "mask": torch.from_numpy(a.mask).long(),
        }
        if self.with_boxes:
            c = self.aug.crop
            out["boxes"] = torch.from_numpy(
                rasterize_boxes(a.boxes, a.labels, self.ds.num_classes, c, c, self.ds.background)
            )
            if self.bias is not None:
                out["bias"] = self.bias(a.boxes, a.labels, c, c)
        return out


class WeakTrainSet(Dataset):
    """W: augmented image + the stored logits under its crop, crop first: only the store
    cells the crop needs are read (padded by repetition to `cells_size`, a fixed size, so
    items batch), with each crop pixel's cell coordinates ("rows", "cols"); the resampling to
    pixels happens on the training device (`targets.StoredLogits`, one `grid_sample`). So a
    few hundred KB travel through the DataLoader instead of a KxCxC float map. Void cells
    (box-method stores) are NaN; "valid" marks padding."""

    def __init__(
        self,
        ds: SegDataset,
        split: str,
        ids: list[str],
        store_location: str | InMemoryLogits,
        aug: AugmentSpec,
        mean,
        std,
    ):
        self.ds, self.split, self.ids = ds, split, ids
        self.store_location, self.aug, self.mean, self.std = store_location, aug, mean, std
        self._store: LogitsStore | None = None  # opened lazily, once per DataLoader worker
        store = self.store
        self.stride, self.half = store.stride, store.dtype == "float16"  # float16: lossless
        widest = math.ceil(aug.crop / min(aug.scale_range) / self.stride * 1.01) + 3
        cells = int(np.ceil(store.sizes.max() / self.stride))
        self.cells_size = min(widest, cells)
        self._store = None  # each worker opens its own

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def store(self) -> LogitsStore | InMemoryLogits:
        if isinstance(self.store_location, InMemoryLogits):
            return self.store_location
        if self._store is None:
            self._store = LogitsStore.open(self.store_location)
        return self._store

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        i, rng = item_key(key)
        image_id = self.ids[i]
        image = self.ds.read_image(self.split, image_id)
        j = self.store.index(image_id)
        h, w = (int(v) for v in self.store.sizes[j])
        if (h, w) != image.shape[:2]:
            raise BoxsegError(
                f"{self.store_location}: logits of {image_id} are for a {w}x{h} image, "
                f"the dataset's is {image.shape[1]}x{image.shape[0]}"
            )
        p = self.aug.draw(rng, h, w)
        row_at, col_at = crop_coords(window(h, w, p, self.aug.crop), self.stride)
        rows, cols = cells_spanned(row_at), cells_spanned(col_at)
        cells = self.store.read(j, rows, cols)
        n = self.cells_size
        if max(cells.shape[-2:]) > n:  # cannot happen with draw_params' windows
            raise RuntimeError(f"a crop needs {tuple(cells.shape[-2:])} cells, more than {n}")
        pad = (0, n - cells.shape[-1], 0, n - cells.shape[-2])
        cells = F.pad(cells[None], pad, mode="replicate")[0] if any(pad) else cells
        a = apply(Aligned(image), p, self.aug.crop)
        return {
            "image": to_tensor(a.image, self.mean, self.std),
            "cells": cells.half() if self.half else cells,
            "rows": torch.from_numpy(row_at - rows.start).float(),
            "cols": torch.from_numpy(col_at - cols.start).float(),
            "valid": torch.from_numpy(a.valid),
        }


class OnlineWeakTrainSet(Dataset):
    """W for online mode: augmented image + its box tensor, for the ancillary net to run on.

    Reads W through `load_weak`, which returns no mask. With `bias` (box_constraint.BiasMaker)
    also the crop's box-constraint bias, so online q is box-consistent as stored q is.
    """

    def __init__(self, ds: SegDataset, split: str, ids: list[str], box_spec: BoxSpec,
                 aug: AugmentSpec, mean, std, bias: BiasMaker | None = None):  # fmt: skip
        self.ds, self.split, self.ids, self.box_spec = ds, split, ids, box_spec
        self.aug, self.mean, self.std, self.bias = aug, mean, std, bias

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        i, rng = item_key(key)
        s = load_weak(self.ds, self.split, self.ids[i], self.box_spec)
        a = apply(Aligned(s.image, boxes=s.boxes, labels=s.labels), self.aug.draw(rng, *s.size),
                  self.aug.crop)  # fmt: skip
        c = self.aug.crop
        boxes = rasterize_boxes(a.boxes, a.labels, self.ds.num_classes, c, c, self.ds.background)
        out = {
            "image": to_tensor(a.image, self.mean, self.std),
            "boxes": torch.from_numpy(boxes),
            "valid": torch.from_numpy(a.valid),
        }
        if self.bias is not None:
            out["bias"] = self.bias(a.boxes, a.labels, c, c)
        return out
