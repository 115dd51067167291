"""Run a trained model on one whole image (used by gen-logits, eval and predict)."""

from __future__ import annotations

import numpy as np
import torch

from boxseg.data.boxes import rasterize_boxes
from boxseg.data.transforms import to_tensor


@torch.no_grad()
def predict_logits(
    model: torch.nn.Module,
    meta: dict,
    image: np.ndarray,
    device: torch.device,
    boxes: np.ndarray | None = None,
    labels: np.ndarray | None = None,
) -> torch.Tensor:
    """K x H x W float32 logits on the CPU. An ancillary model needs boxes and labels."""
    x = to_tensor(image, meta["mean"], meta["std"])[None].to(device)
    box_tensor = None
    if meta["kind"] == "ancillary":
        if boxes is None or labels is None:
            raise ValueError("an ancillary model needs boxes")
        h, w = image.shape[:2]
        raster = rasterize_boxes(boxes, labels, len(meta["class_names"]), h, w, meta["background"])
        box_tensor = torch.from_numpy(raster)[None].to(device)
    return model(x, box_tensor)[0].float().cpu()
