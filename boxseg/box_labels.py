"""Pseudo-labels from boxes alone, the classical baselines `gen-logits --method box|grabcut`:

- box-fill: every pixel inside a box takes its class, smaller boxes painted over larger ones;
  pixels outside all boxes are background, or void where the dataset has no background class.
- GrabCut: OpenCV's GrabCut initialised from each box (pixels outside the box are background to
  it), painted in the same order; a box GrabCut rejects (an error, or no foreground left) is
  box-filled instead. Pixels GrabCut puts in the background are background (or void).

Both become soft logits for the store: log(confidence) for the painted class, the rest of the
probability spread evenly; void pixels get NaN logits, which training reads as "ignore".

A box covers the pixels `data.boxes.pixel_boxes` says, and "smaller" is fewer such pixels (the
box constraint's prior compares the same areas); a box covering no pixel paints nothing and is
no GrabCut fallback.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from boxseg.data.boxes import box_pixels, pixel_boxes
from boxseg.data.sample import VOID

METHODS = ("anc", "box", "grabcut", "sam")


def painting_order(bounds: np.ndarray) -> np.ndarray:
    """Indices of boxes from the most to the fewest pixels covered, so small ones end on top;
    among equal counts the later box ends on top (as the prior chooses). `bounds`: the pixel
    bounds `pixel_boxes` gives (box-fill, GrabCut and SAM paint in this one order)."""
    if not np.issubdtype(bounds.dtype, np.integer):
        raise TypeError("painting_order takes pixel_boxes(...).bounds, not float boxes")
    areas = (bounds[:, 2] - bounds[:, 0]) * (bounds[:, 3] - bounds[:, 1])
    return np.argsort(-areas, kind="stable")


def box_fill(
    height: int, width: int, boxes: np.ndarray, labels: np.ndarray, background: int | None
) -> np.ndarray:
    """HxW uint8 label map: boxes painted largest first; outside them background or VOID."""
    out = np.full((height, width), VOID if background is None else background, np.uint8)
    px = pixel_boxes(boxes, labels, height, width)
    for k in painting_order(px.bounds):
        x1, y1, x2, y2 = px.bounds[k]
        out[y1:y2, x1:x2] = px.labels[k]
    return out


def grabcut_mask(image: np.ndarray, box: np.ndarray, iterations: int, margin: int) -> np.ndarray:
    """HxW bool foreground of one box by GrabCut (rect = the box grown by `margin` pixels).
    Raises cv2.error / ValueError when GrabCut cannot run on it.

    GrabCut's colour models start from k-means seeded by OpenCV's global random generator, so
    it is reseeded for every box: a box's mask then does not depend on what ran before it
    (image order, reader processes), and a store written twice holds the same labels."""
    h, w = image.shape[:2]
    x1, y1, x2, y2 = box_pixels(box[None], h, w)[0]
    x1, y1 = max(0, x1 - margin), max(0, y1 - margin)
    x2, y2 = min(w, x2 + margin), min(h, y2 + margin)
    if x2 - x1 < 2 or y2 - y1 < 2 or (x2 - x1) * (y2 - y1) >= h * w:
        raise ValueError("box too small, or no background outside it")  # GrabCut needs both
    mask = np.zeros((h, w), np.uint8)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(0)
    cv2.grabCut(
        cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
        mask,
        (x1, y1, x2 - x1, y2 - y1),
        bgd,
        fgd,
        iterations,
        cv2.GC_INIT_WITH_RECT,
    )
    return (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)


def grabcut_fill(
    image: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    background: int | None,
    iterations: int = 5,
    margin: int = 0,
) -> tuple[np.ndarray, int]:
    """HxW uint8 label map from GrabCut per box (box-fill where it fails); also the number of
    boxes that fell back to box-fill."""
    h, w = image.shape[:2]
    out = np.full((h, w), VOID if background is None else background, np.uint8)
    px = pixel_boxes(boxes, labels, h, w)
    kept = np.asarray(boxes, np.float32).reshape(-1, 4)[px.keep]
    fallbacks = 0
    for k in painting_order(px.bounds):
        x1, y1, x2, y2 = px.bounds[k]
        try:
            fg = grabcut_mask(image, kept[k], iterations, margin)
            fg[:y1], fg[y2:], fg[:, :x1], fg[:, x2:] = False, False, False, False
            if not fg.any():
                raise ValueError("no foreground")
        except (cv2.error, ValueError):
            fallbacks += 1
            fg = np.zeros((h, w), bool)
            fg[y1:y2, x1:x2] = True
        out[fg] = px.labels[k]
    return out, fallbacks


def labels_to_logits(label_map: np.ndarray, num_classes: int, confidence: float) -> torch.Tensor:
    """HxW labels -> KxHxW logits: log(confidence) for the label, log((1 - c) / (K - 1)) for
    the others; NaN everywhere on VOID pixels (ignored by the W loss)."""
    rest = np.log((1 - confidence) / max(num_classes - 1, 1))
    logits = np.full((num_classes, *label_map.shape), rest, np.float32)
    void = label_map == VOID
    ids = np.where(void, 0, label_map).astype(np.int64)
    np.put_along_axis(logits, ids[None], np.float32(np.log(confidence)), axis=0)
    logits[:, void] = np.nan
    return torch.from_numpy(logits)
