"""What a dataset layout must provide (`SegDataset`), and the pieces every reader shares.

A reader is a frozen dataclass for one layout (formats.SegnetDataset, voc.VocDataset,
cityscapes.CityscapesDataset, folder.FolderDataset) that satisfies `SegDataset`; the rest of
boxseg sees readers only through it. `ReaderBase` gives the parts that are the same for all
(class count, description, image reading, whether an image has a mask), and `check_mask` the
one range check of a mask's class ids.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from boxseg.data.boxes import BoxSpec
from boxseg.data.sample import VOID
from boxseg.errors import BoxsegError
from boxseg.io import read_image, read_text


@runtime_checkable
class SegDataset(Protocol):
    """A dataset on disk, whatever its layout."""

    root: Path
    layout: str
    class_names: tuple[str, ...]
    background: int | None  # index of the background class, None if the dataset has none
    boxes_from_masks: bool  # no box files: boxes are derived from masks
    masks_mark_full: bool  # only some images have masks, and those are F by default

    @property
    def num_classes(self) -> int: ...

    def describe(self) -> dict: ...

    def has_split(self, split: str) -> bool: ...

    def ids(self, split: str) -> list[str]:
        """Image ids of a split, in file order (a clear error if it is missing or empty)."""

    def image_path(self, split: str, image_id: str) -> Path: ...

    def mask_path(self, split: str, image_id: str) -> Path: ...

    def has_mask(self, split: str, image_id: str) -> bool: ...

    def read_image(self, split: str, image_id: str) -> np.ndarray:
        """HxWx3 uint8 RGB."""

    def read_mask(self, split: str, image_id: str) -> np.ndarray:
        """HxW uint8 class ids, VOID (255) where unlabelled; ids out of range are an error."""

    def read_boxes(
        self, split: str, image_id: str, spec: BoxSpec, mask: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(N x 4 float32 xyxy pixel boxes, N int64 labels) of an image, filtered by spec."""


class ReaderBase:
    """The parts every reader shares (readers are frozen dataclasses with `root`, `layout`,
    `class_names` and `background`)."""

    boxes_from_masks = True
    masks_mark_full = False

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def describe(self) -> dict:
        names = list(self.class_names)
        return {"root": str(self.root), "layout": self.layout, "class_names": names}

    def read_image(self, split: str, image_id: str) -> np.ndarray:
        return read_image(self.image_path(split, image_id))

    def has_mask(self, split: str, image_id: str) -> bool:
        return self.mask_path(split, image_id).is_file()


def check_mask(mask: np.ndarray, path: Path, num_classes: int, void: int = VOID) -> np.ndarray:
    """The mask, if every labelled pixel holds a class id below `num_classes` (VOID aside);
    otherwise one line naming the file, the largest bad id and the valid range."""
    bad = (mask >= num_classes) & (mask != VOID)
    if bad.any():
        raise BoxsegError(
            f"{path}: class id {int(mask[bad].max())} out of range "
            f"(0..{num_classes - 1}, void {void})"
        )
    return mask


def list_entry(line: str) -> str:
    """The image id a split-list line names: the line itself (names may hold spaces), as a stem
    if it ends in an image suffix; but the first of SegNet's 'image mask' path pairs."""
    line = line.strip()
    fields = line.split()
    if len(fields) == 2 and all(f.lower().endswith(IMAGE_SUFFIXES) for f in fields):
        line = fields[0]
    return Path(line).stem if line.lower().endswith(IMAGE_SUFFIXES) else Path(line).name


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")  # image files, found in any letter case


def find_image(folder: Path, stem: str, suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> Path | None:
    """folder/<stem><suffix> for the first suffix found, in any letter case (.jpg, .JPG)."""
    for suffix in suffixes:
        for variant in (suffix, suffix.upper()):
            path = folder / f"{stem}{variant}"
            if path.is_file():
                return path
    return None


def read_id_list(path: Path) -> list[str]:
    """Image ids of a split list (`list_entry` of each line); clear errors for an empty list or
    duplicates."""
    ids = [list_entry(line) for line in read_text(path).splitlines() if line.strip()]
    if not ids:
        raise BoxsegError(f"{path}: the split list is empty")
    if len(set(ids)) != len(ids):
        raise BoxsegError(f"{path}: duplicate image ids in the split list")
    return ids


def read_class_names(path: Path) -> tuple[tuple[str, ...], int | None]:
    """Class names of a classes file (one a line, index = line number) and the index of the
    class called `background` (None if there is none)."""
    names = tuple(n.strip() for n in read_text(path).splitlines() if n.strip())
    if not names:
        raise BoxsegError(f"{path}: no class names")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise BoxsegError(f"{path}: duplicate class name '{dup[0]}'")
    if len(names) > 255:
        raise BoxsegError(f"{path}: at most 255 classes are supported")
    return names, names.index("background") if "background" in names else None
