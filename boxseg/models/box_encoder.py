"""The ancillary model's box encoder (method.md, fig-box-encoder.png)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class BoxEncoder(nn.Module):
    """Per injection scale: resize the box tensor (nearest), conv 3x3 -> sigmoid attention map.

    The maps are multiplied into the decoder's features (the ASPP output and the low-level skip),
    outside the backbone, so a pretrained backbone stays usable.
    """

    def __init__(self, box_channels: int, feature_channels: Sequence[int]):
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(box_channels, c, kernel_size=3, padding=1) for c in feature_channels
        )

    def forward(self, boxes: torch.Tensor, sizes: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
        return [
            torch.sigmoid(conv(F.interpolate(boxes, size=size, mode="nearest")))
            for conv, size in zip(self.convs, sizes, strict=True)
        ]
