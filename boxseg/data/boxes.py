"""Bounding boxes: derive them from masks, rasterise them to the box encoder's input tensor."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from boxseg.data.sample import VOID
from boxseg.errors import BoxsegError


@dataclass(frozen=True)
class BoxSpec:
    """How boxes are derived from masks: min component area (pixels) and which classes get boxes.

    classes=None means every class except the background class (if the dataset has one).
    """

    min_area: int = 16
    classes: tuple[int, ...] | None = None

    def to_dict(self) -> dict:
        return {"min_area": self.min_area, "classes": list(self.classes) if self.classes else None}

    @staticmethod
    def from_dict(d: dict) -> BoxSpec:
        classes = d.get("classes")
        return BoxSpec(int(d.get("min_area", 16)), tuple(classes) if classes else None)


def keep_classes(
    boxes: np.ndarray, labels: np.ndarray, classes: Sequence[int] | None
) -> tuple[np.ndarray, np.ndarray]:
    """The boxes (and labels) of `classes` only; all of them when `classes` is None."""
    if classes is None:
        return boxes, labels
    keep = np.isin(labels, classes)
    return boxes[keep], labels[keep]


def boxes_from_mask(
    mask: np.ndarray,
    num_classes: int,
    min_area: int = 1,
    classes: Sequence[int] | None = None,
    background: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One box per 8-connected component of each class (OpenCV), xyxy with exclusive x2/y2.

    Components smaller than `min_area` pixels are dropped; void and the background class never
    get boxes. Returns (boxes Nx4 float32, labels N int64), ordered by class then component.
    """
    wanted = range(num_classes) if classes is None else classes
    present = set(np.unique(mask).tolist()) - {VOID}
    boxes, labels = [], []
    for c in wanted:
        if c == background or c not in present:
            continue
        n, _, stats, _ = cv2.connectedComponentsWithStats(
            (mask == c).astype(np.uint8), connectivity=8
        )
        for j in range(1, n):
            x, y, w, h, area = stats[j]
            if area >= min_area:
                boxes.append((x, y, x + w, y + h))
                labels.append(c)
    return (
        np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        np.asarray(labels, dtype=np.int64),
    )


EDGE_TOL = 1e-3  # box edges this close to a whole pixel count as on it (float noise, e.g. YOLO)


def box_pixels(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nx4 xyxy boxes (floats, x2/y2 exclusive) -> Nx4 int64 pixel bounds [x1, x2) x [y1, y2),
    clipped to the image: the one rule deciding which pixels a box covers, for every consumer
    (the encoder's raster, the box constraint, box-fill, GrabCut, SAM, crops). A pixel is
    covered if the box overlaps it at all (floor of the near edge, ceiling of the far one), so
    a box thinner than a pixel still covers one; edges within `EDGE_TOL` of a whole pixel are
    taken as on it. A box of zero width or height, or one clipped away, is left with no pixel
    (x2 <= x1 or y2 <= y1): `pixel_boxes` says which boxes count."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    near = np.floor(b[:, :2] + EDGE_TOL)
    far = np.maximum(np.ceil(b[:, 2:] - EDGE_TOL), near + (b[:, 2:] > b[:, :2]))
    out = np.concatenate([near, far], 1)
    out = np.clip(out, 0, [width, height, width, height]).astype(np.int64)
    return out


@dataclass(frozen=True)
class PixelBoxes:
    """Boxes as the pixels they cover (`pixel_boxes`): `bounds` M x 4 int64 [x1, x2) x [y1, y2)
    and `labels` M int64 of the boxes that count, `keep` N bool over the boxes given."""

    bounds: np.ndarray
    labels: np.ndarray
    keep: np.ndarray

    @property
    def dropped(self) -> int:
        """How many of the boxes given cover no pixel (left out)."""
        return int((~self.keep).sum())


def pixel_boxes(boxes: np.ndarray, labels: np.ndarray, height: int, width: int) -> PixelBoxes:
    """The one home of box geometry: each box's pixels (`box_pixels`) and which boxes count.

    A box covering no pixel of the height x width image (a click saved as a zero-width box, a
    box clipped away at the image's edge) says nothing about any pixel: every consumer (the
    encoder's raster, the constraint and its prior, the weak-box losses, rank, viz, box-fill,
    GrabCut) leaves it out, and the stages' checks count it (`data.validate`), rather than
    refuse a file a labelling tool wrote."""
    bounds = box_pixels(boxes, height, width)
    keep = (bounds[:, 2] > bounds[:, 0]) & (bounds[:, 3] > bounds[:, 1])
    labels = np.asarray(labels, np.int64).reshape(-1)
    return PixelBoxes(bounds[keep], labels[keep], keep)


BOX_SLACK = 1.0  # pixels a box file's corner may lie outside its image (rounding, 1-based files)


def fit_boxes(boxes: np.ndarray, height: int, width: int, source) -> np.ndarray:
    """Boxes (Nx4 xyxy pixels) checked against their image's real size: a corner more than
    `BOX_SLACK` outside it is an error naming `source` (the box file) and the box; boxes within
    the slack are clipped to the image."""
    b = np.asarray(boxes, np.float32).reshape(-1, 4)
    out = (
        (b[:, 0] < -BOX_SLACK)
        | (b[:, 1] < -BOX_SLACK)
        | (b[:, 2] > width + BOX_SLACK)
        | (b[:, 3] > height + BOX_SLACK)
    )
    if out.any():
        x1, y1, x2, y2 = (float(v) for v in b[int(np.argmax(out))])
        raise BoxsegError(
            f"{source}: box {int(np.argmax(out))} (x1 {x1:g}, y1 {y1:g}, x2 {x2:g}, "
            f"y2 {y2:g} in pixels) lies outside the {width}x{height} image"
        )
    return np.clip(b, 0, [width, height, width, height]).astype(np.float32)


def box_channels(num_classes: int, background: int | None) -> int:
    """Channels of the box tensor: K, plus an 'outside all boxes' one if there is no background."""
    return num_classes if background is not None else num_classes + 1


def rasterize_boxes(
    boxes: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    height: int,
    width: int,
    background: int | None = None,
) -> np.ndarray:
    """The box encoder's input (method.md): channel k is 1 inside every box of class k.

    The background channel (or, for datasets without a background class, an extra last
    channel) is 1 outside all boxes. Overlapping boxes set several channels. A box covers the
    pixels `pixel_boxes` says (boxes covering none are left out). Returns CxHxW float32.
    """
    out = np.zeros((box_channels(num_classes, background), height, width), dtype=np.float32)
    inside = np.zeros((height, width), dtype=bool)
    px = pixel_boxes(boxes, labels, height, width)
    for (x1, y1, x2, y2), k in zip(px.bounds, px.labels, strict=True):
        out[int(k), y1:y2, x1:x2] = 1.0
        inside[y1:y2, x1:x2] = True
    out[num_classes if background is None else background][~inside] = 1.0
    return out
