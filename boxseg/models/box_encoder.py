"""The ancillary model's box encoder (method.md, fig-box-encoder.png), and its direct path.

Per injection scale the box tensor is brought to the feature map's size, then conv 3x3 ->
sigmoid gives the paper's attention map, multiplied into the features. Two things beyond the
paper (`BoxPathSpec`, docs/method.md):

- `resize="max"`: the box tensor is max-pooled (adaptive, so the pooling windows cover every
  pixel) instead of nearest-resized, so every box marks at least one cell at every scale. With
  nearest, 73% of CamVid's pole boxes vanish at stride 16 (180x240).
- `direct=True`: the stride-4 box tensor is also concatenated to the decoder's input, so a box
  can create evidence for its class where the features have none (attention can only scale
  features down).

Checkpoints made before these options existed load as `BoxPathSpec.legacy()`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

RESIZE_MODES = ("max", "nearest")


@dataclass(frozen=True)
class BoxPathSpec:
    """How the boxes enter the ancillary net (stored in model.pt as `box_path`)."""

    resize: str = "max"  # max: every box survives every scale; nearest: the paper's reading
    direct: bool = True  # also concatenate the stride-4 box tensor to the decoder's input

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def legacy() -> BoxPathSpec:
        """What checkpoints without a `box_path` entry were trained with."""
        return BoxPathSpec("nearest", False)


def resize_boxes(boxes: torch.Tensor, size: Sequence[int], mode: str) -> torch.Tensor:
    """The box tensor at `size`: max-pooled (a cell is 1 if any of its pixels is) or nearest."""
    if tuple(boxes.shape[-2:]) == tuple(size):
        return boxes
    if mode == "max":
        return F.adaptive_max_pool2d(boxes, tuple(size))
    return F.interpolate(boxes, size=tuple(size), mode="nearest")


class BoxEncoder(nn.Module):
    """Per injection scale: resize the box tensor, conv 3x3 -> sigmoid attention map.

    The maps are multiplied into the decoder's features (the ASPP output and the low-level skip),
    outside the backbone, so a pretrained backbone stays usable.
    """

    def __init__(self, box_channels: int, feature_channels: Sequence[int], resize: str = "max"):
        super().__init__()
        if resize not in RESIZE_MODES:
            raise ValueError(f"box resize mode {resize!r}: choose from {RESIZE_MODES}")
        self.resize = resize
        self.convs = nn.ModuleList(
            nn.Conv2d(box_channels, c, kernel_size=3, padding=1) for c in feature_channels
        )

    def forward(self, boxes: torch.Tensor, sizes: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
        return [
            torch.sigmoid(conv(resize_boxes(boxes, size, self.resize)))
            for conv, size in zip(self.convs, sizes, strict=True)
        ]
