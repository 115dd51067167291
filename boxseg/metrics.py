"""Confusion-matrix scores (mIoU, per-class IoU, pixel accuracy), and class_map: the per-pixel
class they count."""

from __future__ import annotations

import numpy as np
import torch

from boxseg.data.sample import VOID


def class_map(scores: torch.Tensor) -> torch.Tensor:
    """Per-pixel class of (C, H, W) scores (logits or probabilities): the argmax over C, the
    first class on ties. `max(0).indices` rather than `argmax(0)`: the same result, 4 to 8
    times faster on the CPU for a class-first tensor."""
    return scores.max(0).indices


def confusion_matrix(
    pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray, num_classes: int
) -> np.ndarray:
    """KxK counts, rows = ground truth, columns = prediction; void target pixels are skipped."""
    pred = torch.as_tensor(pred).reshape(-1).long()
    target = torch.as_tensor(target).reshape(-1).long()
    keep = target != VOID
    idx = target[keep] * num_classes + pred[keep]
    counts = torch.bincount(idx, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).cpu().numpy().astype(np.int64)


def scores(conf: np.ndarray, class_names: list[str], unlabelled: np.ndarray | None = None) -> dict:
    """mIoU over classes present in the ground truth or the prediction; percentages.

    per_class_iou is null for a class absent from both. `unlabelled[c]`: pixels of class c the
    prediction left without a label (pseudo-label void); they count as misses.
    """
    conf = np.asarray(conf, dtype=np.int64)
    missed = np.zeros(len(conf), np.int64) if unlabelled is None else np.asarray(unlabelled)
    tp = np.diag(conf).astype(np.float64)
    gt, pr = conf.sum(1) + missed, conf.sum(0)
    union = gt + pr - tp
    present = union > 0
    iou = np.where(present, tp / np.maximum(union, 1), np.nan)
    total = conf.sum() + missed.sum()
    return {
        "miou": float(np.nanmean(iou) * 100) if present.any() else 0.0,
        "per_class_iou": {
            name: (None if np.isnan(v) else float(v * 100))
            for name, v in zip(class_names, iou, strict=True)
        },
        "pixel_acc": float(tp.sum() / total * 100) if total else 0.0,
        "confusion": conf.tolist(),
    }
