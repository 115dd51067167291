"""Run a trained model on whole images (used by gen-logits, eval and predict)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from boxseg.box_constraint import ConstraintRule, constrain_whole
from boxseg.data.boxes import rasterize_boxes
from boxseg.data.transforms import to_tensor


def windowed(
    model: torch.nn.Module, x: torch.Tensor, boxes: torch.Tensor | None, window: int
) -> torch.Tensor:
    """model(x, boxes), or for an image larger than `window` the mean of overlapping
    window x window tiles (a third of a window overlapping), so large images such as
    Cityscapes' 2048x1024 fit in memory."""
    h, w = x.shape[-2:]
    if not window or (h <= window and w <= window):
        return model(x, boxes)
    step = max(1, window * 2 // 3)
    tops = sorted({*range(0, max(h - window, 0) + 1, step), max(h - window, 0)})
    lefts = sorted({*range(0, max(w - window, 0) + 1, step), max(w - window, 0)})
    total, count = None, torch.zeros(1, 1, h, w, device=x.device)
    for t in tops:
        for l in lefts:
            tile = (..., slice(t, t + window), slice(l, l + window))
            out = model(x[tile], None if boxes is None else boxes[tile]).float()
            if total is None:
                total = torch.zeros(1, out.shape[1], h, w, device=x.device)
            total[tile] += out
            count[tile] += 1
    return total / count


def model_inputs(
    meta: dict, image: np.ndarray, boxes: np.ndarray | None, labels: np.ndarray | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(3xHxW normalised image, KxHxW box raster or None) as the model in `meta` takes them."""
    x = to_tensor(image, meta["mean"], meta["std"])
    if meta["kind"] != "ancillary":
        return x, None
    if boxes is None or labels is None:
        raise ValueError("an ancillary model needs boxes")
    h, w = image.shape[:2]
    raster = rasterize_boxes(boxes, labels, len(meta["class_names"]), h, w, meta["background"])
    return x, torch.from_numpy(raster)


@torch.no_grad()
def predict_batch(
    model: torch.nn.Module,
    meta: dict,
    images: list[np.ndarray],
    device: torch.device,
    boxes: list[np.ndarray] | None = None,
    labels: list[np.ndarray] | None = None,
) -> torch.Tensor:
    """N x K x H x W float32 logits, on `device`, of same-size images in one forward pass
    (gen-logits: several images per pass keep a GPU, or the CPU's matrix kernels, busy)."""
    if len({im.shape for im in images}) != 1:
        raise ValueError("predict_batch needs images of one size")
    xs, rasters = zip(
        *(
            model_inputs(
                meta, im, None if boxes is None else boxes[k], None if labels is None else labels[k]
            )
            for k, im in enumerate(images)
        ),
        strict=True,
    )
    b = None if rasters[0] is None else torch.stack(rasters).to(device)
    return model(torch.stack(xs).to(device), b).float()


@torch.no_grad()
def predict_logits(
    model: torch.nn.Module,
    meta: dict,
    image: np.ndarray,
    device: torch.device,
    boxes: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    scales: tuple[float, ...] = (1.0,),
    flip: bool = False,
    window: int = 0,
    constraint: ConstraintRule | None = None,
) -> torch.Tensor:
    """K x H x W float32 logits on the CPU: `predict_on_device`'s, copied to the host."""
    return predict_on_device(
        model, meta, image, device, boxes, labels, scales, flip, window, constraint
    ).cpu()


@torch.no_grad()
def predict_on_device(
    model: torch.nn.Module,
    meta: dict,
    image: np.ndarray,
    device: torch.device,
    boxes: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    scales: tuple[float, ...] = (1.0,),
    flip: bool = False,
    window: int = 0,
    constraint: ConstraintRule | None = None,
) -> torch.Tensor:
    """K x H x W float32 logits left on `device`, for a caller that reduces them there, as
    eval's argmax and confusion matrix do (a Cityscapes image's are about 160 MB). An
    ancillary model needs boxes and labels; `constraint`
    (box_constraint.rule_of) makes its output box-consistent, at pixel level.

    Test-time augmentation: with several `scales` or `flip`, the image is resized / mirrored
    (its boxes are scaled and rasterised at that size, so a thin box keeps a pixel at every
    scale), each output is mapped back to H x W, the softmax probabilities are averaged, and
    their log is returned (argmax and softmax work on it as on logits); the constraint comes
    last, on the H x W result. `window`: run images larger than this in overlapping tiles
    (`windowed`)."""
    x, raster = model_inputs(meta, image, boxes, labels)
    x = x[None].to(device)
    h, w = image.shape[:2]
    box_tensor = None if raster is None else raster[None].to(device)
    if tuple(scales) == (1.0,) and not flip:
        out = windowed(model, x, box_tensor, window)[0].float()
        return constrain_whole(out, constraint, boxes, labels)
    probs = None
    for scale in scales:
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        xs = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        bs = None
        if box_tensor is not None:
            factor = np.array([size[1] / w, size[0] / h] * 2, np.float32)
            bs = torch.from_numpy(
                rasterize_boxes(
                    boxes * factor, labels, len(meta["class_names"]), *size, meta["background"]
                )
            )[None].to(device)
        for mirrored in (False, True) if flip else (False,):
            xi = xs.flip(-1) if mirrored else xs
            bi = None if bs is None else (bs.flip(-1) if mirrored else bs)
            out = windowed(model, xi, bi, window).float()
            out = out.flip(-1) if mirrored else out
            p = torch.softmax(
                F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False), dim=1
            )[0]
            probs = p if probs is None else probs + p
    out = torch.log(probs / probs.sum(0, keepdim=True))
    return constrain_whole(out, constraint, boxes, labels)
