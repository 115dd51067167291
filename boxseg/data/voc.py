"""PASCAL VOC 2012 (+ SBD's augmented masks), the paper's setting.

    VOC/JPEGImages/<id>.jpg
    VOC/SegmentationClass/<id>.png      palette PNG, 255 void (VOC's 2913 masks)
    VOC/SegmentationClassAug/<id>.png   index PNG (SBD + VOC, the usual 10,582-image set)
    VOC/Annotations/<id>.xml            boxes of every image, with or without a mask
    VOC/ImageSets/Segmentation/{train,val}.txt, and train_aug.txt (in ImageSets/SegmentationAug/,
    ImageSets/Segmentation/ or the root)

F = the images of `--full-list` (e.g. ImageSets/Segmentation/train.txt, 1,464 images) within
the split (train_aug); W = the rest of it (9,118), read through their XML boxes only.
A mask is read from SegmentationClass when there is one, else from SegmentationClassAug.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from boxseg.data.box_files import read_voc_xml
from boxseg.data.boxes import BoxSpec, fit_boxes, keep_classes
from boxseg.data.reader import ReaderBase, check_mask, find_image, read_id_list
from boxseg.data.validate import image_size
from boxseg.errors import BoxsegError

VOC_CLASSES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
LIST_DIRS = ("ImageSets/Segmentation", "ImageSets/SegmentationAug", "ImageSets/Main", ".")


def is_voc(root: Path) -> bool:
    return (root / "JPEGImages").is_dir() and (root / "ImageSets").is_dir()


def read_index_png(path: Path) -> np.ndarray:
    """Class indices of a palette or greyscale PNG (PIL keeps palette indices; OpenCV would
    turn a palette PNG into colours)."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L"):
                raise BoxsegError(f"{path}: a mask must be a palette or greyscale class-index PNG")
            return np.array(im, dtype=np.uint8)
    except FileNotFoundError as e:
        raise BoxsegError(f"{path}: mask not found") from e
    except OSError as e:
        raise BoxsegError(f"{path}: not a readable mask image") from e


@dataclass(frozen=True)
class VocDataset(ReaderBase):
    root: Path
    layout: str = "voc"
    class_names: tuple[str, ...] = VOC_CLASSES
    void_value: int = 255
    background: int | None = 0
    boxes_from_masks = False  # every image has its boxes in Annotations/

    def _list(self, split: str) -> Path | None:
        for d in LIST_DIRS:
            if (self.root / d / f"{split}.txt").is_file():
                return self.root / d / f"{split}.txt"
        return None

    def has_split(self, split: str) -> bool:
        return self._list(split) is not None

    def ids(self, split: str) -> list[str]:
        path = self._list(split)
        if path is None:
            raise BoxsegError(
                f"{self.root}/ImageSets: no {split}.txt split list "
                f"(looked in {', '.join(LIST_DIRS)})"
            )
        return read_id_list(path)

    def image_path(self, split: str, image_id: str) -> Path:
        path = find_image(self.root / "JPEGImages", image_id, (".jpg", ".jpeg", ".png"))
        if path is None:
            raise BoxsegError(f"{self.root / 'JPEGImages' / image_id}.jpg: image not found")
        return path

    def mask_path(self, split: str, image_id: str) -> Path:
        voc = self.root / "SegmentationClass" / f"{image_id}.png"
        return voc if voc.is_file() else self.root / "SegmentationClassAug" / f"{image_id}.png"

    def read_mask(self, split: str, image_id: str) -> np.ndarray:
        path = self.mask_path(split, image_id)
        mask = read_index_png(path)
        return check_mask(mask, path, self.num_classes)

    def read_boxes(self, split: str, image_id: str, spec: BoxSpec, mask=None):
        """Boxes of Annotations/<id>.xml (box_files.read_voc_xml: VOC's 1-based inclusive
        corners -> 0-based xyxy, x2/y2 exclusive); `spec.classes` filters them."""
        path = self.root / "Annotations" / f"{image_id}.xml"
        boxes, labels = read_voc_xml(path, self.class_names)
        h, w = image_size(self.image_path(split, image_id))
        return keep_classes(fit_boxes(boxes, h, w, path), labels, spec.classes)
