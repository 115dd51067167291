"""Joint augmentation: random scale, crop and horizontal flip applied identically to an image,
its mask, its boxes and its (full-resolution) soft-label logits, so that all stay aligned."""

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


def apply(x: Aligned, p: AugParams, crop: int) -> Aligned:
    """Scale, pad to at least `crop` (padding is void / invalid), crop, then maybe flip."""
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
