"""Dataset readers. A layout is detected from the directory (`open_dataset`); every reader
satisfies `reader.SegDataset`, and `load_full` / `load_weak` make its `Sample`s.

Supported layouts (voc.py, cityscapes.py and folder.py hold the other readers):
- segnet: the SegNet/CamVid layout: `<split>.txt` (one stem a line, or SegNet's
  "image-path mask-path" lines), `<split>/<stem>.png|.jpg` images and `<split>annot/<stem>.png`
  class-index masks. Class names come from an optional `classes.txt` (one name a line, index =
  line number; mask value 255 is void). Without it the 11 CamVid classes are assumed, with
  mask value 11 as void.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from boxseg.data import cityscapes, folder, voc
from boxseg.data.box_cache import derived_boxes
from boxseg.data.boxes import BoxSpec, boxes_from_mask
from boxseg.data.reader import (
    IMAGE_SUFFIXES,
    ReaderBase,
    SegDataset,
    check_mask,
    find_image,
    read_class_names,
    read_id_list,
)
from boxseg.data.sample import VOID, Sample
from boxseg.errors import BoxsegError
from boxseg.io import read_label_png

__all__ = ["SegDataset", "SegnetDataset", "load_full", "load_weak", "open_dataset"]

CAMVID_CLASSES = (
    "sky",
    "building",
    "pole",
    "road",
    "pavement",
    "tree",
    "sign_symbol",
    "fence",
    "car",
    "pedestrian",
    "bicyclist",
)
SUPPORTED_LAYOUTS = {
    "segnet": "<split>.txt lists, <split>/ images, <split>annot/ masks (CamVid, SegNet tutorial)",
    "voc": "JPEGImages/, SegmentationClass(Aug)/, Annotations/ XML, ImageSets/ lists (VOC+SBD)",
    "folder": "images/, masks/, boxes.json (COCO) or labels/ (YOLO) or annotations/ (VOC XML), "
    "classes.txt, <split>.txt (docs/formats.md)",
    "cityscapes": "leftImg8bit/<split>/<city>/, gtFine/<split>/<city>/ labelIds, instanceIds",
}


@dataclass(frozen=True)
class SegnetDataset(ReaderBase):
    """The segnet layout (CamVid): split lists, image folders, mask folders; no box files."""

    root: Path
    layout: str
    class_names: tuple[str, ...]
    void_value: int
    background: int | None  # index of the background class, None if the dataset has none

    def has_split(self, split: str) -> bool:
        return (self.root / f"{split}.txt").is_file()

    def ids(self, split: str) -> list[str]:
        """Image ids of a split, in file order; a clear error for a missing or empty list."""
        path = self.root / f"{split}.txt"
        if not path.is_file():
            have = sorted(p.stem for p in self.root.glob("*.txt") if p.name != "classes.txt")
            raise BoxsegError(
                f"{path}: no such split list (splits here: {', '.join(have) or 'none'})"
            )
        return read_id_list(path)

    def image_path(self, split: str, image_id: str) -> Path:
        path = find_image(self.root / split, image_id, IMAGE_SUFFIXES)
        if path is not None:
            return path
        raise BoxsegError(f"{self.root / split / image_id}.png|.jpg: image not found")

    def mask_path(self, split: str, image_id: str) -> Path:
        return self.root / f"{split}annot" / f"{image_id}.png"

    def read_mask(self, split: str, image_id: str) -> np.ndarray:
        """The mask with void mapped to VOID; class ids out of range are an error."""
        path = self.mask_path(split, image_id)
        raw = read_label_png(path)
        mask = raw.copy()
        mask[raw == self.void_value] = VOID
        return check_mask(mask, path, self.num_classes, self.void_value)

    def read_boxes(
        self, split: str, image_id: str, spec: BoxSpec, mask: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Boxes of an image. The segnet layout has none: derive them from the mask (once per
        mask file and process: box_cache.py)."""

        def derive():
            m = self.read_mask(split, image_id) if mask is None else mask
            return boxes_from_mask(
                m, self.num_classes, spec.min_area, spec.classes, self.background
            )

        return derived_boxes(
            [self.mask_path(split, image_id)],
            spec,
            derive,
            (self.num_classes, self.background, self.void_value),
        )


def _open_segnet(root: Path) -> SegnetDataset:
    classes_file = root / "classes.txt"
    if classes_file.is_file():
        names, background = read_class_names(classes_file)
        return SegnetDataset(root, "segnet", names, 255, background)
    return SegnetDataset(root, "segnet", CAMVID_CLASSES, len(CAMVID_CLASSES), None)


def _is_segnet(root: Path) -> bool:
    return any(
        (root / f"{p.stem}annot").is_dir() and (root / p.stem).is_dir() for p in root.glob("*.txt")
    )


def open_dataset(root: Path | str) -> SegDataset:
    """Detect the layout of `root` and open it; a clear error lists the supported layouts."""
    root = Path(root)
    if not root.is_dir():
        raise BoxsegError(f"{root}: dataset directory not found")
    if cityscapes.is_cityscapes(root):
        return cityscapes.CityscapesDataset(root)
    if voc.is_voc(root):
        return voc.VocDataset(root)
    if folder.is_folder(root):
        return folder.open_folder(root)
    if _is_segnet(root):
        return _open_segnet(root)
    supported = "; ".join(f"{k}: {v}" for k, v in SUPPORTED_LAYOUTS.items())
    raise BoxsegError(f"{root}: unknown dataset layout (supported: {supported})")


def load_full(
    ds: SegDataset, split: str, image_id: str, spec: BoxSpec, with_boxes: bool = True
) -> Sample:
    """A fully labelled sample: image, mask and (unless not wanted) boxes, derived from the mask
    where the dataset has none."""
    image = ds.read_image(split, image_id)
    mask = ds.read_mask(split, image_id)
    if mask.shape != image.shape[:2]:
        raise BoxsegError(
            f"{ds.mask_path(split, image_id)}: mask is {mask.shape[1]}x{mask.shape[0]} "
            f"but its image is {image.shape[1]}x{image.shape[0]}"
        )
    if not with_boxes:
        return Sample(image_id, image, mask, np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
    boxes, labels = ds.read_boxes(split, image_id, spec, mask)
    return Sample(image_id, image, mask, boxes, labels)


def load_weak(ds: SegDataset, split: str, image_id: str, spec: BoxSpec) -> Sample:
    """A weakly labelled sample: image and boxes only. The mask never leaves this function."""
    image = ds.read_image(split, image_id)
    boxes, labels = ds.read_boxes(split, image_id, spec)
    return Sample(image_id, image, None, boxes, labels)
