"""W's targets in one home: how the ancillary logits l_anc of one W training crop are made.

A target source is a pair: a torch Dataset that ships what a crop needs from disk (its image,
and either the store cells under it or its box raster), and a callable `batch -> N x K x H x W
float32 logits` that runs on the training device without gradient. Two sources:

- `stored`: `WeakTrainSet` + `StoredLogits`: the cells under the crop, decoded to the crop's
  pixels by one `grid_sample` (cells.resample_cells);
- `online`: `OnlineWeakTrainSet` + `OnlineAncillary`: the frozen ancillary net on the crop and
  its box raster (like a store of some stride and dtype when conv's F inputs must look like
  W's).

Both then apply the box constraint at pixel resolution (`Constrained`), with the crop's boxes in
the original image and the source pixel of every crop row and column (`crop_evidence`): the
same rule, the same pixels, whichever source. Void pixels of box-method stores come back NaN
(`without_void`). A new source is a Dataset and a callable.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from boxseg.box_constraint import BoxEvidence, ConstraintRule
from boxseg.cells import as_stored, cells_spanned, crop_coords, resample_cells
from boxseg.data.boxes import BoxSpec, rasterize_boxes
from boxseg.data.formats import SegDataset, load_weak
from boxseg.data.torchsets import AugmentSpec, crop_evidence, item_key
from boxseg.data.transforms import Aligned, apply, to_tensor, window
from boxseg.errors import BoxsegError
from boxseg.store import LogitsSource, LogitsStore

Source = Callable[[dict], torch.Tensor]


class WeakTrainSet(Dataset):
    """W from a store: augmented image + the stored cells under its crop, crop first: only the
    cells the crop needs are read (padded by repetition to `cells_size`, a fixed size, so items
    batch), with each crop pixel's cell coordinates ("rows", "cols") and, when the store has a
    constraint rule, the crop's box evidence (the store's boxes: what gen-logits saw). The
    resampling to pixels happens on the training device (`StoredLogits`). W's masks are never
    read; "valid" marks padding."""

    def __init__(
        self,
        ds: SegDataset,
        split: str,
        ids: list[str],
        store_location: str | Path | LogitsSource,
        aug: AugmentSpec,
        mean,
        std,
    ):
        self.ds, self.split, self.ids = ds, split, ids
        self.store_location, self.aug, self.mean, self.std = store_location, aug, mean, std
        self._store: LogitsStore | None = None  # opened lazily, once per DataLoader worker
        store = self.store
        self.stride, self.half = store.stride, store.dtype == "float16"  # float16: lossless
        self.with_evidence = store.rule is not None
        widest = math.ceil(aug.crop / min(aug.scale_range) / self.stride * 1.01) + 3
        cells = int(np.ceil(store.sizes.max() / self.stride))
        self.cells_size = min(widest, cells)
        self._store = None  # each worker opens its own
        self._boxes: dict[int, tuple] = {}  # per worker: a few KB an image

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def store(self) -> LogitsSource:
        """The source: the one given, or the store at the location given (opened once)."""
        if not isinstance(self.store_location, (str, Path)):
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
        out = {
            "image": to_tensor(a.image, self.mean, self.std),
            "cells": cells.half() if self.half else cells,
            "rows": torch.from_numpy(row_at - rows.start).float(),
            "cols": torch.from_numpy(col_at - cols.start).float(),
            "valid": torch.from_numpy(a.valid),
        }
        if self.with_evidence:
            if j not in self._boxes:
                self._boxes[j] = self.store.read_boxes(j)
            out |= crop_evidence(*self._boxes[j], h, w, p, self.aug.crop)
        return out


class OnlineWeakTrainSet(Dataset):
    """W for the online source: augmented image + its box raster for the ancillary net, and
    the crop's box evidence for the constraint. Reads W through `load_weak` (no mask)."""

    def __init__(
        self,
        ds: SegDataset,
        split: str,
        ids: list[str],
        box_spec: BoxSpec,
        aug: AugmentSpec,
        mean,
        std,
    ):
        self.ds, self.split, self.ids, self.box_spec = ds, split, ids, box_spec
        self.aug, self.mean, self.std = aug, mean, std

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        i, rng = item_key(key)
        s = load_weak(self.ds, self.split, self.ids[i], self.box_spec)
        p = self.aug.draw(rng, *s.size)
        a = apply(Aligned(s.image, boxes=s.boxes, labels=s.labels), p, self.aug.crop)
        c = self.aug.crop
        boxes = rasterize_boxes(a.boxes, a.labels, self.ds.num_classes, c, c, self.ds.background)
        return {
            "image": to_tensor(a.image, self.mean, self.std),
            "boxes": torch.from_numpy(boxes),
            "valid": torch.from_numpy(a.valid),
        } | crop_evidence(s.boxes, s.labels, *s.size, p, c)


class StoredLogits:
    """The stored logits of a W batch's crops, decoded on the training device from the cells
    the batch carries (`WeakTrainSet`), one `grid_sample` for the batch. `void`: the store may
    hold void cells (box-method stores); they come back as NaN pixels."""

    def __init__(self, void: bool):
        self.void = void

    @torch.no_grad()
    def __call__(self, batch: dict) -> torch.Tensor:
        return resample_cells(batch["cells"].float(), batch["rows"], batch["cols"], self.void)


class OnlineAncillary:
    """The frozen ancillary net on the batch's crops and box rasters. With `like_store` =
    (stride, dtype), its logits are then pooled, rounded and decoded as a store of that stride
    and dtype would give them back (`cells.as_stored`): the conv merger's F inputs in store
    mode."""

    def __init__(self, anc: nn.Module, like_store: tuple[int, str] | None = None):
        self.anc, self.like_store = anc, like_store

    @torch.no_grad()
    def __call__(self, batch: dict) -> torch.Tensor:
        out = self.anc(batch["image"], batch["boxes"]).float()
        return out if self.like_store is None else as_stored(out, *self.like_store)


@dataclass
class Constrained:
    """A source made box-consistent at pixel resolution with the batch's box evidence."""

    source: Source
    rule: ConstraintRule

    @torch.no_grad()
    def __call__(self, batch: dict) -> torch.Tensor:
        return self.rule.apply(self.source(batch), BoxEvidence.of_batch(batch))


def constrained(source: Source, rule: ConstraintRule | None) -> Source:
    """`source` with the box constraint applied after it (as it is when `rule` is None)."""
    return source if rule is None else Constrained(source, rule)


def without_void(logits: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits with void pixels (NaN) zeroed, valid without them): void pixels carry no
    target. No host sync."""
    return logits.nan_to_num(0.0), valid & ~torch.isnan(logits[:, 0])
