"""Pseudo-labels from Segment Anything with box prompts: `gen-logits --method sam`.

The `segment-anything` package (`pip install "boxseg[sam]"`) and a checkpoint file
(`--sam-checkpoint`, e.g. sam_vit_b_01ec64.pth from the segment-anything releases; boxseg
never downloads one) give a `SamPredictor`. Per image: the image is embedded once, all of its
boxes go through one batched prompt call (one mask per box, single-mask output), and the masks
are painted as box-fill paints boxes: larger boxes first (by the pixels they cover), so a
smaller object stays on top; a box covering no pixel (a click) is not sent to SAM;
pixels in no mask are background, or void where the dataset has no background class. The
label map then becomes soft logits like `--method box` (`--confidence`), so train-primary,
`eval --logits` and `viz` take the store unchanged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from boxseg.box_labels import painting_order
from boxseg.data.boxes import pixel_boxes
from boxseg.data.sample import VOID
from boxseg.errors import BoxsegError

SAM_MODELS = ("vit_b", "vit_l", "vit_h")


def load_sam(checkpoint: str | Path | None, model: str, device: torch.device):
    """A SamPredictor for `checkpoint` (a `model` architecture), on `device`."""
    try:
        from segment_anything import SamPredictor, sam_model_registry
    except ImportError as e:
        raise BoxsegError(
            "--method sam needs the segment-anything package: pip install 'boxseg[sam]'"
        ) from e
    if checkpoint is None:
        raise BoxsegError(
            "--method sam needs --sam-checkpoint PATH: SAM's weights (e.g. "
            "sam_vit_b_01ec64.pth from the segment-anything releases); none is "
            "downloaded at run time"
        )
    if model not in SAM_MODELS:
        raise BoxsegError(f"--sam-model {model}: choose from {', '.join(SAM_MODELS)}")
    path = Path(checkpoint)
    if not path.is_file():
        raise BoxsegError(f"{path}: SAM checkpoint not found")
    try:
        sam = sam_model_registry[model](checkpoint=str(path))
    except Exception as e:  # noqa: BLE001 - a wrong or broken file is the user's to fix
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        why = f"{type(e).__name__}: {first[:160]}" if first else type(e).__name__
        raise BoxsegError(f"{path}: not a SAM {model} checkpoint ({why})") from e
    return SamPredictor(sam.to(device).eval())


@torch.no_grad()
def sam_masks(predictor, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """N x H x W bool: SAM's mask for each box of the image (one batched prompt call)."""
    h, w = image.shape[:2]
    if len(boxes) == 0:
        return np.zeros((0, h, w), bool)
    predictor.set_image(image)  # RGB uint8, embedded once for all boxes
    device = predictor.device
    prompts = predictor.transform.apply_boxes_torch(torch.as_tensor(boxes, device=device), (h, w))
    masks, _, _ = predictor.predict_torch(None, None, boxes=prompts, multimask_output=False)
    return masks[:, 0].cpu().numpy().astype(bool)


def sam_fill(
    predictor, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, background: int | None
) -> tuple[np.ndarray, int]:
    """HxW uint8 label map from SAM's masks, each clipped to its box's pixels (`pixel_boxes`,
    as GrabCut's are), painted in box-fill's order (`painting_order`); also the number of
    boxes whose mask came back empty (their box is left as SAM left it: unpainted). A box
    covering no pixel is never sent to SAM, paints nothing and is not counted as empty."""
    h, w = image.shape[:2]
    out = np.full((h, w), VOID if background is None else background, np.uint8)
    px = pixel_boxes(boxes, labels, h, w)
    masks = sam_masks(predictor, image, np.asarray(boxes, np.float32).reshape(-1, 4)[px.keep])
    for k, (x1, y1, x2, y2) in enumerate(px.bounds):  # a mask stays in its box
        inside = np.zeros((h, w), bool)
        inside[y1:y2, x1:x2] = True
        masks[k] &= inside
    for k in painting_order(px.bounds):
        out[masks[k]] = px.labels[k]
    return out, int(sum(not m.any() for m in masks))
