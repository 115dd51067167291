"""Cityscapes (leftImg8bit + gtFine), 19 train classes.

    CS/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    CS/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png     (34 label ids)
    CS/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_instanceIds.png  (label*1000 + instance)

Image ids are `<city>/<city>_<seq>_<frame>`. Masks: label ids mapped to the 19 train ids (the
rest void, 255). Boxes: one per instance of a thing class (person ... bicycle) from
instanceIds, and one per connected component of a stuff class (road ... sky), as the paper
derives them. W's boxes are computed from those files; W's masks never reach training.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from boxseg.data.box_cache import derived_boxes
from boxseg.data.boxes import BoxSpec, boxes_from_mask
from boxseg.data.reader import ReaderBase
from boxseg.data.sample import VOID
from boxseg.errors import BoxsegError
from boxseg.io import read_label_png

TRAIN_CLASSES = (
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic_light",
    "traffic_sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
)
LABEL_TO_TRAIN = {
    7: 0,
    8: 1,
    11: 2,
    12: 3,
    13: 4,
    17: 5,
    19: 6,
    20: 7,
    21: 8,
    22: 9,
    23: 10,
    24: 11,
    25: 12,
    26: 13,
    27: 14,
    28: 15,
    31: 16,
    32: 17,
    33: 18,
}
THINGS = tuple(range(11, 19))
LUT = np.full(256, VOID, np.uint8)
for _label, _train in LABEL_TO_TRAIN.items():
    LUT[_label] = _train


def is_cityscapes(root: Path) -> bool:
    return (root / "leftImg8bit").is_dir() and (root / "gtFine").is_dir()


@dataclass(frozen=True)
class CityscapesDataset(ReaderBase):
    root: Path
    layout: str = "cityscapes"
    class_names: tuple[str, ...] = TRAIN_CLASSES
    void_value: int = 255
    background: int | None = None
    boxes_from_masks = True  # boxes come from gtFine's label and instance maps

    def has_split(self, split: str) -> bool:
        return (self.root / "leftImg8bit" / split).is_dir()

    def ids(self, split: str) -> list[str]:
        folder = self.root / "leftImg8bit" / split
        if not folder.is_dir():
            raise BoxsegError(f"{folder}: no such split")
        ids = sorted(
            f"{p.parent.name}/{p.name[: -len('_leftImg8bit.png')]}"
            for p in folder.glob("*/*_leftImg8bit.png")
        )
        if not ids:
            raise BoxsegError(f"{folder}: no *_leftImg8bit.png images")
        return ids

    def image_path(self, split: str, image_id: str) -> Path:
        path = self.root / "leftImg8bit" / split / f"{image_id}_leftImg8bit.png"
        if not path.is_file():
            raise BoxsegError(f"{path}: image not found")
        return path

    def mask_path(self, split: str, image_id: str) -> Path:
        return self.root / "gtFine" / split / f"{image_id}_gtFine_labelIds.png"

    def read_mask(self, split: str, image_id: str) -> np.ndarray:
        """Train ids (0..18), void 255."""
        return LUT[read_label_png(self.mask_path(split, image_id))]

    def read_boxes(self, split: str, image_id: str, spec: BoxSpec, mask=None):
        """Stuff boxes from the mask's components, thing boxes from the instance map; derived
        once per pair of files and process (box_cache.py)."""
        inst = self.root / "gtFine" / split / f"{image_id}_gtFine_instanceIds.png"
        files = [self.mask_path(split, image_id), inst]
        return derived_boxes(files, spec, lambda: self._derive_boxes(split, image_id, spec, mask))

    def _derive_boxes(self, split: str, image_id: str, spec: BoxSpec, mask=None):
        mask = self.read_mask(split, image_id) if mask is None else mask
        wanted = set(range(self.num_classes) if spec.classes is None else spec.classes)
        stuff = [c for c in range(self.num_classes) if c not in THINGS and c in wanted]
        boxes, labels = boxes_from_mask(mask, self.num_classes, spec.min_area, stuff, None)
        path = self.root / "gtFine" / split / f"{image_id}_gtFine_instanceIds.png"
        inst = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if inst is None:
            raise BoxsegError(f"{path}: missing or not a readable instance map")
        out_b, out_l = [boxes], [labels]
        for value in np.unique(inst):
            label = int(value) // 1000 if value >= 1000 else int(value)
            train = LABEL_TO_TRAIN.get(label)
            if train not in THINGS or train not in wanted:
                continue
            if value < 1000:  # a crowd region: its connected components
                b, _ = boxes_from_mask(
                    np.where(inst == value, train, VOID).astype(np.uint8),
                    self.num_classes,
                    spec.min_area,
                    [train],
                    None,
                )
                out_b.append(b)
                out_l.append(np.full(len(b), train, np.int64))
                continue
            ys, xs = np.nonzero(inst == value)
            if len(ys) >= spec.min_area:
                out_b.append(
                    np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float32)
                )
                out_l.append(np.array([train], np.int64))
        return np.concatenate(out_b).astype(np.float32), np.concatenate(out_l)
