"""The store's cell grid: logits held at a stride s (one cell per s x s pixel block), how
they are made (`pool_logits`: block means), coded (`encode_int8`), and read back at pixels
(`upsample_logits` for a whole image, `resample_cells` for any pixel coordinates: the crops of
training), and which pixels and cells a crop window shows (`Window`, `crop_coords`,
`source_pixels`).

Decoding is bilinear with half-pixel centres (each cell sits at the centre of its block).
Void (NaN) cells are left out of pooling and decoding alike (`resample_void_aware`). The box
constraint is never part of the cells: it is applied to decoded pixels (box_constraint.py).
Imports nothing of boxseg: the store, the transforms and the W targets all stand on it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

INT8_RANGE = 16.0  # int8 codes cover log-probabilities in [-16, 0]; below is clamped
INT8_STEPS = 254  # codes 0..254 hold log-probabilities; 255 marks a void pixel (NaN logits)


def int8_codes(logits: torch.Tensor) -> torch.Tensor:
    """KxHxW (or NxKxHxW) logits -> uint8 codes of log-probabilities over the class dimension
    (-3), round(-log_softmax * 254 / 16), on the logits' device (no host round trip).

    Softmax ignores a per-pixel shift, so log-probabilities keep all the information in the
    logits; they lie in (-inf, 0], and classes below -16 (probability < 1.2e-7) are clamped.
    The step is 16/254 = 0.063 nats, so a decoded logit is within 0.032 of the original and
    each probability within about 3% of its value (docs/store.md). NaN (void) -> code 255."""
    logp = torch.log_softmax(logits.float(), dim=-3).clamp_min(-INT8_RANGE)
    codes = torch.round(-logp * (INT8_STEPS / INT8_RANGE)).nan_to_num(255)
    return codes.to(torch.uint8)


def int8_values(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes (a tensor, on any device) -> float32 log-probabilities, NaN where void:
    `decode_int8` without leaving the device, bit for bit the same values."""
    out = codes.float() * (-INT8_RANGE / INT8_STEPS)
    return out.masked_fill(codes == 255, torch.nan)


def encode_int8(logits: torch.Tensor) -> np.ndarray:
    """KxHxW logits on the CPU -> the store's uint8 codes (`int8_codes`) as an array."""
    return int8_codes(logits).numpy()


def decode_int8(codes: np.ndarray) -> torch.Tensor:
    """uint8 codes -> float32 log-probabilities (usable as logits); NaN where void."""
    out = codes.astype(np.float32) * (-INT8_RANGE / INT8_STEPS)
    out[codes == 255] = np.nan
    return torch.from_numpy(out)


def resample_void_aware(
    resample: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    void: torch.Tensor,
    any_weight: bool = False,
) -> torch.Tensor:
    """`resample` (a linear map averaging nearby values of N x C x h x w: block means,
    bilinear interpolation) of `x` with its `void` values (N x 1 x h x w bool; NaN in x) left
    out: the resampled non-void values over their resampled weight (normalised
    interpolation). An output is void (NaN) where void inputs outweigh the others, so a void
    region keeps its size; with `any_weight`, only where no non-void input reaches it. The one
    void-aware resampling of the cell grid: pooling, upsampling and crops all go through it."""
    weight = resample((~void).float())
    out = resample(x.nan_to_num(0.0)) / weight.clamp_min(1e-6)
    return torch.where(weight > 0 if any_weight else weight >= 0.5, out, torch.nan)


def pool_logits(logits: torch.Tensor, stride: int, void_free: bool = False) -> torch.Tensor:
    """KxHxW (or NxKxHxW) -> Kx ceil(H/s) x ceil(W/s): block means (edge blocks padded by
    replication).

    Void pixels (NaN logits) are left out of their block's mean; a block is void (NaN) only
    when all of its pixels are. `void_free`: the caller knows there is none (no host sync)."""
    if stride == 1:
        return logits
    h, w = logits.shape[-2:]
    ph, pw = -h % stride, -w % stride
    x = logits if logits.dim() == 4 else logits[None]
    x = F.pad(x, (0, pw, 0, ph), mode="replicate") if (ph or pw) else x
    void = None if void_free else torch.isnan(x[:, :1])
    if void is None or not void.any():
        out = F.avg_pool2d(x, stride)
    else:
        out = resample_void_aware(lambda t: F.avg_pool2d(t, stride), x, void, any_weight=True)
    return out if logits.dim() == 4 else out[0]


def upsample_logits(
    logits: torch.Tensor, stride: int, height: int, width: int, void_free: bool = False
) -> torch.Tensor:
    """Inverse of `pool_logits`: Kxhxw (or NxKxhxw) at stride s -> KxHxW at pixel resolution.

    With void cells (NaN), values are interpolated from the non-void neighbours only
    (normalised interpolation), and a pixel is void where void cells outweigh the others, so
    a void region keeps its size instead of spreading by a stride. `void_free`: the caller
    knows there is none (no host sync)."""
    if stride == 1:
        return logits[..., :height, :width]
    h, w = logits.shape[-2:]
    x = logits if logits.dim() == 4 else logits[None]

    def up(t: torch.Tensor) -> torch.Tensor:
        size = (h * stride, w * stride)
        return F.interpolate(t, size=size, mode="bilinear", align_corners=False)

    void = None if void_free else torch.isnan(x[:, :1])
    if void is None or not void.any():
        out = up(x)[..., :height, :width]
    else:
        out = resample_void_aware(up, x, void)[..., :height, :width]
    return out if logits.dim() == 4 else out[0]


FP16_MAX = float(np.finfo(np.float16).max)  # float16's largest finite value; past it, inf


def as_stored(logits: torch.Tensor, stride: int, dtype: str) -> torch.Tensor:
    """What a store of this stride and dtype gives back decoded (before the box constraint)
    for pixel-resolution logits (KxHxW, or a batch NxKxHxW; no void pixels): pooled to the
    stride, rounded to the dtype, resampled to HxW. The conv merger's F inputs are made this
    way in store mode, so it learns on the kind of input it corrects on W; a whole batch at
    once on the logits' device, without host syncs (int8: `int8_codes` and `int8_values`, the
    store's codes and values made on the device; float16: clamped to float16's finite range
    first, as the store writes it, so a logit past 65504 stays finite on both paths)."""
    h, w = logits.shape[-2:]
    pooled = pool_logits(logits.float(), stride, void_free=True)
    if dtype == "int8":
        pooled = int8_values(int8_codes(pooled))
    else:
        pooled = pooled.clamp(-FP16_MAX, FP16_MAX).half().float()
    return upsample_logits(pooled, stride, h, w, void_free=True)


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


def source_pixels(win: Window) -> tuple[np.ndarray, np.ndarray]:
    """For each row and column of the crop window, the original image's row / column it shows
    by nearest pixel (cv2.resize's INTER_NEAREST lookup: floor(scaled index * src / scaled));
    -1 on padding; columns reversed when the window is flipped. Masks are cropped by this
    lookup, and the box constraint judges a crop pixel by the original pixel it names."""
    fy, fx = 1.0 / (win.h / win.src_h), 1.0 / (win.w / win.src_w)
    rows = np.full(win.crop, -1, np.int64)
    cols = np.full(win.crop, -1, np.int64)
    r = np.floor(np.arange(win.top, win.top + win.rows, dtype=np.float64) * fy)
    c = np.floor(np.arange(win.left, win.left + win.cols, dtype=np.float64) * fx)
    rows[: win.rows] = np.minimum(r.astype(np.int64), win.src_h - 1)
    cols[: win.cols] = np.minimum(c.astype(np.int64), win.src_w - 1)
    return rows, cols[::-1].copy() if win.flip else cols


def cells_spanned(coords: np.ndarray) -> slice:
    """The cells that bilinear reads at these fractional cell coordinates touch."""
    return slice(int(coords.min()), int(np.ceil(coords.max())) + 1)


def resample_cells(
    cells: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, void: bool = True
) -> torch.Tensor:
    """Bilinear resampling of NxKxhxw cells at fractional cell coordinates (rows: NxH, cols:
    NxW) -> NxKxHxW, one fused pass (`F.grid_sample`), on whatever device the cells are:
    W targets are made this way on the training device from the few cells under each crop.
    With `void`, void cells (NaN) are left out of the interpolation and a pixel is void
    (NaN) where void cells outweigh the others, as in `upsample_logits`; without it the
    caller knows there is none (no extra passes)."""
    h, w = cells.shape[-2:]
    gy = (2 * rows.float() + 1) / h - 1
    gx = (2 * cols.float() + 1) / w - 1
    grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), -1)

    def sample(x: torch.Tensor) -> torch.Tensor:
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    if not void:
        return sample(cells)
    return resample_void_aware(sample, cells, torch.isnan(cells[:, :1]))
