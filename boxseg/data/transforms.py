"""Joint augmentation: random scale, crop and horizontal flip applied identically to an image,
its mask and its boxes, so that all stay aligned; W's soft-label logits follow the same crop
window (`window`) from the store's cells (weak_targets.py).

Crop first: the crop window is worked out in the original image's coordinates and only that
window is resampled (the image by one affine warp, the mask by nearest-pixel lookup; logits
held at a store's stride by one bilinear pass straight from the cells under the crop, on the
training device). A 2048x1024 image at scale 2 never exists as a 4096x2048 array, nor its
logits as a KxHxW float map: the cost of a sample follows the crop, not the image. The plain
path (resize all, then crop), the reference the crop-first path is tested and benchmarked
against, is tests/helpers/plain_path.py.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np
import torch

from boxseg.cells import Window, source_pixels
from boxseg.data.boxes import box_pixels
from boxseg.data.sample import VOID

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class AugParams:
    scale: float
    top: int
    left: int
    flip: bool


@dataclass
class Aligned:
    """What travels through augmentation together. Any field but `image` may be None."""

    image: np.ndarray  # HxWx3 uint8
    mask: np.ndarray | None = None  # HxW uint8, VOID = ignore
    boxes: np.ndarray | None = None  # Nx4 xyxy
    labels: np.ndarray | None = None  # N
    valid: np.ndarray | None = None  # HxW bool: False on padding


def draw_params(
    rng: np.random.Generator,
    height: int,
    width: int,
    crop: int,
    scale_range: tuple[float, float],
    hflip: bool,
) -> AugParams:
    """Draw a random scale, crop offset (after padding to the crop size) and flip."""
    scale = float(rng.uniform(*scale_range))
    h, w = max(1, round(height * scale)), max(1, round(width * scale))
    top = int(rng.integers(0, max(h - crop, 0) + 1))
    left = int(rng.integers(0, max(w - crop, 0) + 1))
    return AugParams(scale, top, left, bool(hflip and rng.random() < 0.5))


def window(height: int, width: int, p: AugParams, crop: int) -> Window:
    """The crop window that augmentation `p` cuts from a height x width image."""
    h, w = max(1, round(height * p.scale)), max(1, round(width * p.scale))
    return Window(height, width, h, w, p.top, p.left, crop, p.flip)


def _warp_image(image: np.ndarray, win: Window) -> np.ndarray:
    """The crop of the scaled image by one affine warp (cv2.resize's INTER_LINEAR mapping,
    edge pixels replicated inside the image, zeros on padding)."""
    sx, sy = win.w / win.src_w, win.h / win.src_h
    m = np.array([[sx, 0, 0.5 * sx - 0.5 - win.left], [0, sy, 0.5 * sy - 0.5 - win.top]])
    out = cv2.warpAffine(
        image, m, (win.crop, win.crop), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    out[win.rows :] = 0
    out[:, win.cols :] = 0
    return out


def _nearest(plane: np.ndarray, win: Window, pad) -> np.ndarray:
    """The crop of a label plane scaled by nearest pixel (`cells.source_pixels`, unflipped),
    `pad` on padding."""
    rows, cols = source_pixels(replace(win, flip=False))
    out = np.full((win.crop, win.crop), pad, dtype=plane.dtype)
    out[: win.rows, : win.cols] = plane[np.ix_(rows[: win.rows], cols[: win.cols])]
    return out


def _crop_boxes(boxes: np.ndarray, labels: np.ndarray | None, win: Window):
    """Boxes in the crop (unflipped), in whole pixels: the crop pixels whose source pixel (the
    nearest-pixel lookup masks are cropped by) lies in the box (`box_pixels`), so the box
    raster, the mask and the box constraint agree on every pixel. Boxes that show no pixel of
    the crop are dropped."""
    rows, cols = source_pixels(replace(win, flip=False))
    rows, cols = rows[: win.rows], cols[: win.cols]  # nondecreasing: a box is a run of them
    b = box_pixels(boxes, win.src_h, win.src_w)
    out = np.stack(
        [
            np.searchsorted(cols, b[:, 0]),
            np.searchsorted(rows, b[:, 1]),
            np.searchsorted(cols, b[:, 2]),
            np.searchsorted(rows, b[:, 3]),
        ],
        1,
    )
    out = out.astype(np.float32).reshape(-1, 4)
    keep = (out[:, 2] > out[:, 0]) & (out[:, 3] > out[:, 1])
    return out[keep], None if labels is None else labels[keep]


def apply(x: Aligned, p: AugParams, crop: int) -> Aligned:
    """Scale, pad to at least `crop` (padding is void / invalid), crop, then maybe flip, with
    only the crop window ever resampled."""
    win = window(*x.image.shape[:2], p, crop)
    image = _warp_image(x.image, win)
    valid = _nearest(np.ones(x.image.shape[:2], bool) if x.valid is None else x.valid, win, False)
    mask = None if x.mask is None else _nearest(x.mask, win, VOID)
    boxes, labels = (None, x.labels) if x.boxes is None else _crop_boxes(x.boxes, x.labels, win)
    return _flip_and_pack(Aligned(image, mask, boxes, labels, valid), p.flip, crop)


def _flip_and_pack(a: Aligned, flip: bool, crop: int) -> Aligned:
    """Mirror the crop's image, valid map, mask and boxes when `flip`, and make the arrays
    contiguous."""
    image, mask, valid, boxes = a.image, a.mask, a.valid, a.boxes
    if flip:
        image, valid = image[:, ::-1], valid[:, ::-1]
        mask = None if mask is None else mask[:, ::-1]
        if boxes is not None:
            boxes = np.stack([crop - boxes[:, 2], boxes[:, 1], crop - boxes[:, 0], boxes[:, 3]], 1)
    contiguous = np.ascontiguousarray
    mask = None if mask is None else contiguous(mask)
    return Aligned(contiguous(image), mask, boxes, a.labels, contiguous(valid))


def to_tensor(image: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """HxWx3 uint8 -> 3xHxW float32, normalised."""
    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255)
    return (t - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
