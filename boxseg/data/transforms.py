"""Joint augmentation: random scale, crop and horizontal flip applied identically to an image,
its mask, its boxes and its soft-label logits, so that all stay aligned.

Crop first: the crop window is worked out in the original image's coordinates and only that
window is resampled (the image by one affine warp, the mask by nearest-pixel lookup, logits
held at a store's stride by one bilinear pass straight from the cells under the crop). A
2048x1024 image at scale 2 never exists as a 4096x2048 array, nor its logits as a KxHxW float
map: the cost of a sample follows the crop, not the image. `resize_then_crop` is the plain
path (resize all, then crop), kept as the reference the crop-first path is tested and
benchmarked against.
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


def cell_coords(start: int, n: int, scaled: int, src: int, stride: int = 1) -> np.ndarray:
    """For crop pixels start..start+n-1 along an axis of `src` pixels scaled to `scaled`: the
    (fractional) index of the cell, among values held at `stride`, that each pixel is read at
    (cell c covers pixels c*s ... c*s + s - 1 and sits at their centre). Half-pixel centres
    as `F.interpolate(..., align_corners=False)`; past the image's edge the edge repeats."""
    y = np.arange(start, start + n, dtype=np.float64)
    pix = np.clip((y + 0.5) * (src / scaled) - 0.5, 0, src - 1)
    return np.clip((pix + 0.5) / stride - 0.5, 0, -(-src // stride) - 1)


def crop_coords(win: Window, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, column) cell coordinates of every pixel of the crop window (columns reversed
    when the window is flipped)."""
    rows = cell_coords(win.top, win.crop, win.h, win.src_h, stride)
    cols = cell_coords(win.left, win.crop, win.w, win.src_w, stride)
    return rows, cols[::-1].copy() if win.flip else cols


def cells_spanned(coords: np.ndarray) -> slice:
    """The cells that bilinear reads at these fractional cell coordinates touch."""
    return slice(int(coords.min()), int(np.ceil(coords.max())) + 1)


def cells_needed(win: Window, stride: int) -> tuple[slice, slice]:
    """The rows and columns of cells held at `stride` that the crop window reads."""
    rows, cols = crop_coords(win, stride)
    return cells_spanned(rows), cells_spanned(cols)


def resample_cells(
    cells: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, void: bool = True
) -> torch.Tensor:
    """Bilinear resampling of NxKxhxw cells at fractional cell coordinates (rows: NxH, cols:
    NxW) -> NxKxHxW, one fused pass (`F.grid_sample`), on whatever device the cells are:
    W targets are made this way on the training device from the few cells under each crop.
    With `void`, void cells (NaN) are left out of the interpolation and a pixel is void
    (NaN) where void cells outweigh the others, as in `store.upsample_logits`; without it the
    caller knows there is none (no extra passes)."""
    h, w = cells.shape[-2:]
    gy = (2 * rows.float() + 1) / h - 1
    gx = (2 * cols.float() + 1) / w - 1
    grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), -1)

    def sample(x: torch.Tensor) -> torch.Tensor:
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    if not void:
        return sample(cells)
    missing = torch.isnan(cells[:, :1])
    weight = sample((~missing).to(cells.dtype))
    out = sample(cells.nan_to_num(0.0)) / weight.clamp_min(1e-6)
    return torch.where(weight >= 0.5, out, torch.nan)


def crop_logits(
    cells: torch.Tensor, win: Window, stride: int = 1, origin: tuple[int, int] = (0, 0)
) -> torch.Tensor:
    """The crop window (KxCxC, flipped with it) of logits held at `stride` (`cells`: Kxhxw;
    `origin`: the index of cells[:, 0, 0] when only `cells_needed` were read)."""
    rows, cols = crop_coords(win, stride)
    rows = torch.from_numpy(rows - origin[0]).float()[None]
    cols = torch.from_numpy(cols - origin[1]).float()[None]
    cells = cells.float()[None]
    return resample_cells(cells, rows, cols, bool(torch.isnan(cells[:, :1]).any()))[0]


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
    return _flip_and_pack(Aligned(image, mask, boxes, labels, logits, valid), p.flip, crop)


def _flip_and_pack(a: Aligned, flip: bool, crop: int) -> Aligned:
    """Mirror the crop's image, valid map, mask and boxes when `flip` (its logits come
    mirrored already), and make the arrays contiguous."""
    image, mask, valid, boxes = a.image, a.mask, a.valid, a.boxes
    if flip:
        image, valid = image[:, ::-1], valid[:, ::-1]
        mask = None if mask is None else mask[:, ::-1]
        if boxes is not None:
            boxes = np.stack([crop - boxes[:, 2], boxes[:, 1], crop - boxes[:, 0], boxes[:, 3]], 1)
    contiguous = np.ascontiguousarray
    return Aligned(contiguous(image), None if mask is None else contiguous(mask), boxes, a.labels,
                   a.logits, contiguous(valid))  # fmt: skip


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

    if p.flip and logits is not None:
        logits = logits.flip(-1)
    return _flip_and_pack(
        Aligned(image, mask, boxes, labels, logits, valid), p.flip, image.shape[1]
    )


def to_tensor(image: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """HxWx3 uint8 -> 3xHxW float32, normalised."""
    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255)
    return (t - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
