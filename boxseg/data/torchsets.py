"""torch Datasets for training: F (image, mask, box tensor) and W (image, stored logits).

The W set reads images and the logits store only: it has no way to reach W's masks or boxes.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from boxseg.box_constraint import BiasMaker
from boxseg.data.boxes import BoxSpec, rasterize_boxes
from boxseg.data.formats import SegDataset, load_full, load_weak
from boxseg.data.transforms import (
    Aligned,
    apply,
    cells_needed,
    crop_logits,
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
    """W: augmented image + its stored ancillary logits, cropped identically (only the stored
    cells under the crop are read and resampled)."""

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
        win = window(h, w, p, self.aug.crop)  # crop first: read and resample only its cells
        rows, cols = cells_needed(win, self.store.stride)
        cells = self.store.read(j, rows, cols)
        logits = crop_logits(cells, win, self.store.stride, (rows.start, cols.start))
        a = apply(Aligned(image), p, self.aug.crop)
        void = torch.isnan(logits).any(0)  # box-method stores mark void pixels with NaN
        return {
            "image": to_tensor(a.image, self.mean, self.std),
            "logits": logits.nan_to_num(0.0),
            "valid": torch.from_numpy(a.valid) & ~void,
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
