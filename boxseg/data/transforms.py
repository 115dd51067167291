"""Joint augmentation: random scale, crop and horizontal flip applied identically to an image,
its mask, its boxes and its soft-label logits, so that all stay aligned.

Crop first: the crop window is worked out in the original image's coordinates and only that
window is resampled (the image by one affine warp, the mask by nearest-pixel lookup, logits at
any stride by separable bilinear taps straight from the stored cells). A 2048x1024 image at
scale 2 never exists as a 4096x2048 array, nor its logits as a KxHxW float map: the cost of a
sample follows the crop, not the image. `resize_then_crop` is the plain path (resize all, then
crop), kept as the reference the crop-first path is tested and benchmarked against.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

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
    logits: torch.Tensor | None = None  # KxHxW float32
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


@dataclass(frozen=True)
class Window:
    """A crop in the original image's terms: the image (src_h x src_w) scaled to h x w, and the
    crop's pixel (y, x) showing that scaled image's pixel (top + y, left + x); rows and columns
    past the scaled image's edge are padding."""

    src_h: int
    src_w: int
    h: int
    w: int
    top: int
    left: int
    crop: int
    flip: bool

    @property
    def rows(self) -> int:
        """Rows of the crop that show the image (the rest is padding)."""
        return max(0, min(self.crop, self.h - self.top))

    @property
    def cols(self) -> int:
        """Columns of the crop that show the image."""
        return max(0, min(self.crop, self.w - self.left))


def window(height: int, width: int, p: AugParams, crop: int) -> Window:
    """The crop window that augmentation `p` cuts from a height x width image."""
    h, w = max(1, round(height * p.scale)), max(1, round(width * p.scale))
    return Window(height, width, h, w, p.top, p.left, crop, p.flip)


def _bilinear(dst: np.ndarray, n_in: int, n_out: int):
    """Taps of `F.interpolate(..., mode="bilinear", align_corners=False)` from n_in to n_out
    values along one axis, for output indices `dst`: (first, second, weight of the second)."""
    src = np.maximum((dst + 0.5) * (n_in / n_out) - 0.5, 0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    return i0, np.minimum(i0 + 1, n_in - 1), src - i0


def taps(start: int, n: int, scaled: int, src: int, stride: int = 1):
    """Where output pixels start..start+n of an axis of `src` pixels, scaled to `scaled`, read
    values held at `stride` (cell c covers pixels c*s..c*s+s-1): (indices, weights), each
    n x 4, such that out[i] = sum_k weights[i, k] * cells[indices[i, k]]. This is the store's
    resampling to pixels (`store.upsample_logits`) followed by the scale's, folded into one
    separable step, so only the crop's cells are read and only the crop is computed."""
    y0, y1, wy = _bilinear(np.arange(start, start + n, dtype=np.float64), src, scaled)
    cells = -(-src // stride)
    index, weight = [], []
    for y, w in [(y0, 1 - wy), (y1, wy)]:  # each pixel y is itself a blend of two cells
        c0, c1, wc = _bilinear(y.astype(np.float64), cells, cells * stride)
        index += [c0, c1]
        weight += [w * (1 - wc), w * wc]
    return np.stack(index, 1), np.stack(weight, 1).astype(np.float32)


def cells_needed(win: Window, stride: int) -> tuple[slice, slice]:
    """The rows and columns of cells held at `stride` that the crop window reads."""
    r, _ = taps(win.top, max(win.rows, 1), win.h, win.src_h, stride)
    c, _ = taps(win.left, max(win.cols, 1), win.w, win.src_w, stride)
    return slice(int(r.min()), int(r.max()) + 1), slice(int(c.min()), int(c.max()) + 1)


def crop_logits(
    cells: torch.Tensor, win: Window, stride: int = 1, origin: tuple[int, int] = (0, 0)
) -> torch.Tensor:
    """The crop window of logits held at `stride`: KxCxC, 0 on padding, flipped with the
    window. `cells` is Kxhxw; `origin` the index of cells[:, 0, 0] when only `cells_needed`
    were read. Void cells (NaN) are left out of the interpolation and a pixel is void (NaN)
    where void cells outweigh the others, as in `store.upsample_logits`."""
    ri, rw = taps(win.top, win.rows, win.h, win.src_h, stride)
    ci, cw = taps(win.left, win.cols, win.w, win.src_w, stride)
    ri, ci = torch.from_numpy(ri - origin[0]), torch.from_numpy(ci - origin[1])
    rw, cw = torch.from_numpy(rw), torch.from_numpy(cw)

    def resample(x: torch.Tensor) -> torch.Tensor:
        x = sum(x.index_select(1, ri[:, k]) * rw[:, k, None] for k in range(4))
        return sum(x.index_select(2, ci[:, k]) * cw[:, k] for k in range(4))

    cells = cells.float()
    void = torch.isnan(cells[:1])
    if void.any():
        weight = resample((~void).float())
        values = resample(cells.nan_to_num(0.0)) / weight.clamp_min(1e-6)
        values = torch.where(weight >= 0.5, values, torch.nan)
    else:
        values = resample(cells)
    out = values.new_zeros((cells.shape[0], win.crop, win.crop))
    out[:, : win.rows, : win.cols] = values
    return out.flip(-1) if win.flip else out


def _warp_image(image: np.ndarray, win: Window) -> np.ndarray:
    """The crop of the scaled image by one affine warp (cv2.resize's INTER_LINEAR mapping,
    edge pixels replicated inside the image, zeros on padding)."""
    sx, sy = win.w / win.src_w, win.h / win.src_h
    m = np.array([[sx, 0, 0.5 * sx - 0.5 - win.left], [0, sy, 0.5 * sy - 0.5 - win.top]])
    out = cv2.warpAffine(image, m, (win.crop, win.crop), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REPLICATE)  # fmt: skip
    out[win.rows :] = 0
    out[:, win.cols :] = 0
    return out


def _nearest(plane: np.ndarray, win: Window, pad) -> np.ndarray:
    """The crop of a label plane scaled by nearest pixel (cv2.resize's INTER_NEAREST lookup:
    source index = floor(scaled index * src / scaled)), `pad` on padding."""
    fy, fx = 1.0 / (win.h / win.src_h), 1.0 / (win.w / win.src_w)
    rows = np.floor(np.arange(win.top, win.top + win.rows, dtype=np.float64) * fy)
    cols = np.floor(np.arange(win.left, win.left + win.cols, dtype=np.float64) * fx)
    rows = np.minimum(rows.astype(np.int64), win.src_h - 1)
    cols = np.minimum(cols.astype(np.int64), win.src_w - 1)
    out = np.full((win.crop, win.crop), pad, dtype=plane.dtype)
    out[: win.rows, : win.cols] = plane[np.ix_(rows, cols)]
    return out


def _crop_boxes(boxes: np.ndarray, labels: np.ndarray | None, win: Window):
    """Boxes scaled, shifted into the crop and clipped to it; boxes left empty are dropped."""
    boxes = boxes * np.array([win.w / win.src_w, win.h / win.src_h] * 2, np.float32)
    boxes = boxes - np.array([win.left, win.top, win.left, win.top], np.float32)
    boxes = np.clip(boxes, 0, [win.crop] * 4).astype(np.float32)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return boxes[keep], None if labels is None else labels[keep]


def apply(x: Aligned, p: AugParams, crop: int) -> Aligned:
    """Scale, pad to at least `crop` (padding is void / invalid), crop, then maybe flip, with
    only the crop window ever resampled. `x.logits` are at pixel resolution; logits held at a
    store's stride go through `cells_needed` and `crop_logits` instead."""
    win = window(*x.image.shape[:2], p, crop)
    image = _warp_image(x.image, win)
    valid = _nearest(np.ones(x.image.shape[:2], bool) if x.valid is None else x.valid, win, False)
    mask = None if x.mask is None else _nearest(x.mask, win, VOID)
    logits = None if x.logits is None else crop_logits(x.logits, win)
    boxes, labels = (None, x.labels) if x.boxes is None else _crop_boxes(x.boxes, x.labels, win)
    if p.flip:
        image, valid = image[:, ::-1], valid[:, ::-1]
        mask = None if mask is None else mask[:, ::-1]
        if boxes is not None:
            boxes = np.stack([crop - boxes[:, 2], boxes[:, 1], crop - boxes[:, 0], boxes[:, 3]], 1)
    return Aligned(
        np.ascontiguousarray(image),
        None if mask is None else np.ascontiguousarray(mask),
        boxes,
        labels,
        logits,
        np.ascontiguousarray(valid),
    )


def resize_then_crop(x: Aligned, p: AugParams, crop: int) -> Aligned:
    """The plain path: resize the whole image (and its pixel-resolution logits), pad, crop,
    maybe flip. Not used in training: the reference `apply` is tested and benchmarked against."""
    height, width = x.image.shape[:2]
    h, w = max(1, round(height * p.scale)), max(1, round(width * p.scale))
    image = cv2.resize(x.image, (w, h), interpolation=cv2.INTER_LINEAR)
    mask = None if x.mask is None else cv2.resize(x.mask, (w, h), interpolation=cv2.INTER_NEAREST)
    valid = (
        np.ones((h, w), bool)
        if x.valid is None
        else cv2.resize(x.valid.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(
            bool
        )
    )
    logits = None
    if x.logits is not None:
        logits = F.interpolate(x.logits[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    boxes = None if x.boxes is None else x.boxes * np.array([w / width, h / height] * 2, np.float32)

    ph, pw = max(crop - h, 0), max(crop - w, 0)
    if ph or pw:
        image = np.pad(image, ((0, ph), (0, pw), (0, 0)))
        valid = np.pad(valid, ((0, ph), (0, pw)))
        if mask is not None:
            mask = np.pad(mask, ((0, ph), (0, pw)), constant_values=VOID)
        if logits is not None:
            logits = F.pad(logits, (0, pw, 0, ph))

    t, l_ = p.top, p.left
    image = image[t : t + crop, l_ : l_ + crop]
    valid = valid[t : t + crop, l_ : l_ + crop]
    mask = None if mask is None else mask[t : t + crop, l_ : l_ + crop]
    logits = None if logits is None else logits[:, t : t + crop, l_ : l_ + crop]
    labels = x.labels
    if boxes is not None:
        boxes = boxes - np.array([l_, t, l_, t], np.float32)
        boxes = np.clip(boxes, 0, [crop, crop, crop, crop]).astype(np.float32)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, labels = boxes[keep], None if labels is None else labels[keep]

    if p.flip:
        cw = image.shape[1]
        image, valid = image[:, ::-1], valid[:, ::-1]
        mask = None if mask is None else mask[:, ::-1]
        logits = None if logits is None else logits.flip(-1)
        if boxes is not None:
            boxes = np.stack([cw - boxes[:, 2], boxes[:, 1], cw - boxes[:, 0], boxes[:, 3]], 1)
    return Aligned(
        np.ascontiguousarray(image),
        None if mask is None else np.ascontiguousarray(mask),
        boxes,
        labels,
        logits,
        np.ascontiguousarray(valid),
    )


def to_tensor(image: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """HxWx3 uint8 -> 3xHxW float32, normalised."""
    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255)
    return (t - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
