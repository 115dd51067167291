"""torch Datasets for training on F (image, mask, box tensor); what every training set shares
(`item_key`, `AugmentSpec`, `crop_evidence`). W's sets are with W's targets (weak_targets.py).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch.utils.data import Dataset

from boxseg.box_constraint import item_evidence
from boxseg.cells import source_pixels
from boxseg.data.box_noise import BoxNoise, noisy_boxes
from boxseg.data.boxes import BoxSpec, rasterize_boxes
from boxseg.data.formats import SegDataset, load_full
from boxseg.data.transforms import Aligned, AugParams, apply, draw_params, to_tensor, window


def noise_rng(key: int | tuple[int, int]) -> np.random.Generator:
    """The generator of an item's box noise: from its own seed, apart from the augmentation's
    (so turning box noise on leaves every crop, scale and flip as it was)."""
    if isinstance(key, tuple):
        return np.random.default_rng((int(key[1]), 1))
    return np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))


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


def crop_evidence(
    boxes: np.ndarray, labels: np.ndarray, height: int, width: int, p: AugParams, crop: int
) -> dict[str, torch.Tensor]:
    """What the box constraint needs of one training crop (`box_constraint.BoxEvidence`): the
    boxes' pixel bounds in the original image and the source pixel of each crop row and
    column (the lookup the crop's mask gets)."""
    rows, cols = source_pixels(window(height, width, p, crop))
    return item_evidence(boxes, labels, height, width, rows, cols)


class FullTrainSet(Dataset):
    """F: augmented image + mask (+ the box tensor for the ancillary net; with `evidence`, what
    the box constraint needs of the crop: `crop_evidence`). `box_noise`: F's boxes made
    imprecise afresh at every draw (box_noise.py), so the ancillary net learns that a box is
    a hint; the mask stays exact."""

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
        evidence: bool = False,
        box_noise: BoxNoise | None = None,
    ):
        self.ds, self.split, self.ids, self.box_spec = ds, split, ids, box_spec
        self.aug, self.with_boxes, self.mean, self.std = aug, with_boxes, mean, std
        self.evidence, self.box_noise = evidence, box_noise or BoxNoise()
        boxed = box_spec.classes if box_spec.classes else range(ds.num_classes)
        self.flip_classes = tuple(k for k in boxed if k != ds.background)  # a flip's choices

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        i, rng = item_key(key)
        s = load_full(
            self.ds, self.split, self.ids[i], self.box_spec, self.with_boxes or self.evidence
        )
        p = self.aug.draw(rng, *s.size)
        if self.box_noise.active:
            boxes, labels = noisy_boxes(
                s.boxes, s.labels, *s.size, self.box_noise, noise_rng(key), self.flip_classes
            )
            s = dataclasses.replace(s, boxes=boxes, labels=labels)
        a = apply(Aligned(s.image, s.mask, s.boxes, s.labels), p, self.aug.crop)
        out = {
            "image": to_tensor(a.image, self.mean, self.std),
            "mask": torch.from_numpy(a.mask).long(),
        }
        if self.with_boxes:
            c = self.aug.crop
            out["boxes"] = torch.from_numpy(
                rasterize_boxes(a.boxes, a.labels, self.ds.num_classes, c, c, self.ds.background)
            )
        if self.evidence:
            out |= crop_evidence(s.boxes, s.labels, *s.size, p, self.aug.crop)
        return out
