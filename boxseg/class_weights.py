"""Class weights for the losses (`--class-weights none|median-freq|FILE`).

Median-frequency balancing as in SegNet (Eigen and Fergus): the frequency of class c is
f_c = (pixels of c) / (pixels of the images where c appears), counted over F's masks, and
w_c = median(f) / f_c. Rare, thin classes (CamVid's pole, sign, pedestrian, ...) get weights
above 1, large ones (road, sky) below; without them every from-scratch model leaves the rare
classes at 0 IoU. A class absent from F's masks gets weight 1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from boxseg.data.sample import VOID
from boxseg.errors import BoxsegError


def class_pixel_counts(masks, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(pixels of each class, pixels of the images each class appears in), over `masks`
    (an iterable of HxW class-index arrays, VOID ignored)."""
    pixels = np.zeros(num_classes, np.int64)
    present_in = np.zeros(num_classes, np.int64)
    for mask in masks:
        counts = np.bincount(mask[mask != VOID].ravel(), minlength=num_classes)[:num_classes]
        pixels += counts
        present_in[counts > 0] += int((mask != VOID).sum())
    return pixels, present_in


def median_frequency(pixels: np.ndarray, present_in: np.ndarray) -> np.ndarray:
    """w_c = median(f) / f_c with f_c = pixels_c / present_in_c; 1 for absent classes."""
    seen = pixels > 0
    weights = np.ones(len(pixels), np.float64)
    if not seen.any():
        return weights.astype(np.float32)
    freq = pixels[seen] / present_in[seen]
    weights[seen] = np.median(freq) / freq
    return weights.astype(np.float32)


def read_weights_file(path: Path, class_names: tuple[str, ...]) -> np.ndarray:
    """A weights file: one weight per class, in class order, whitespace or newline separated,
    or `name weight` lines naming every class."""
    try:
        words = path.read_text().split()
    except OSError as e:
        raise BoxsegError(f"{path}: cannot read the class weights file ({e.strerror})") from e
    k = len(class_names)
    try:
        if len(words) == 2 * k and words[0] in class_names:
            pairs = dict(zip(words[0::2], words[1::2], strict=True))
            unknown = sorted(set(pairs) - set(class_names))
            if unknown:
                raise BoxsegError(f"{path}: unknown class '{unknown[0]}'")
            missing = [n for n in class_names if n not in pairs]
            if missing:
                raise BoxsegError(f"{path}: no weight for class '{missing[0]}'")
            values = [float(pairs[n]) for n in class_names]
        elif len(words) == k:
            values = [float(w) for w in words]
        else:
            raise BoxsegError(
                f"{path}: {len(words)} values; give {k} weights (one per class, "
                "in class order) or 'name weight' lines"
            )
    except ValueError as e:
        raise BoxsegError(f"{path}: not a number ({e})") from e
    weights = np.asarray(values, np.float64)
    if not np.all(np.isfinite(weights)) or (weights < 0).any() or not (weights > 0).any():
        raise BoxsegError(f"{path}: weights must be finite, >= 0, and not all 0")
    return weights.astype(np.float32)


def resolve_class_weights(option: str, ds, split: str, full_ids: list[str]) -> torch.Tensor | None:
    """The K weights for `--class-weights` (none -> None), counted over F's masks for
    median-freq."""
    if option in ("", "none"):
        return None
    if option == "median-freq":
        masks = (ds.read_mask(split, i) for i in full_ids)
        return torch.from_numpy(median_frequency(*class_pixel_counts(masks, ds.num_classes)))
    path = Path(option)
    if not path.is_file():
        raise BoxsegError(f"--class-weights {option}: not none, median-freq or an existing file")
    return torch.from_numpy(read_weights_file(path, tuple(ds.class_names)))
