"""The plain augmentation path: resize the whole image (and its pixel-resolution logits), pad,
crop, maybe flip. Training never runs it (it crops first: data/transforms.py `apply`, and W's
stored cells under the crop, weak_targets.py); it is the reference the crop-first path is
tested (tests/data) and benchmarked (benchmarks/datapath_bench.py) against."""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from boxseg.data.boxes import box_pixels
from boxseg.data.sample import VOID
from boxseg.data.transforms import Aligned, AugParams


def resize_then_crop(
    x: Aligned, p: AugParams, crop: int, logits: torch.Tensor | None = None
) -> tuple[Aligned, torch.Tensor | None]:
    """`x` (and `logits`, K x H x W at pixel resolution) resized to the scale of `p`, padded to
    `crop` (padding void and invalid, logits zero), cropped at p's offset and maybe flipped;
    the crop and its logits (None without)."""
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
    if logits is not None:
        logits = F.interpolate(logits[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    planes = None
    if x.boxes is not None:  # each box as a plane, resized like the mask (nearest)
        planes = np.zeros((len(x.boxes), h, w), np.uint8)
        for k, (x1, y1, x2, y2) in enumerate(box_pixels(x.boxes, height, width)):
            plane = np.zeros((height, width), np.uint8)
            plane[y1:y2, x1:x2] = 1
            planes[k] = cv2.resize(plane, (w, h), interpolation=cv2.INTER_NEAREST)

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
    labels, boxes = x.labels, None
    if planes is not None:  # each box: the extent of its plane in the crop
        boxes = np.zeros((len(planes), 4), np.float32)
        for k, plane in enumerate(planes[:, t : t + crop, l_ : l_ + crop]):
            ys, xs = np.nonzero(plane)
            if len(ys):
                boxes[k] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, labels = boxes[keep], None if labels is None else labels[keep]

    if p.flip:
        c = image.shape[1]
        image, valid = image[:, ::-1], valid[:, ::-1]
        mask = None if mask is None else mask[:, ::-1]
        logits = None if logits is None else logits.flip(-1)
        if boxes is not None:
            boxes = np.stack([c - boxes[:, 2], boxes[:, 1], c - boxes[:, 0], boxes[:, 3]], 1)
    contiguous = np.ascontiguousarray
    mask = None if mask is None else contiguous(mask)
    return Aligned(contiguous(image), mask, boxes, labels, valid=contiguous(valid)), logits
