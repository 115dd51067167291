"""DeepLabv3+ (ASPP + decoder with a low-level skip), optionally with the box encoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.segmentation.deeplabv3 import ASPP

from boxseg.models.backbone import build_backbone
from boxseg.models.box_encoder import BoxEncoder, BoxPathSpec, resize_boxes
from boxseg.models.spec import ModelSpec


class DeepLabV3Plus(nn.Module):
    """DeepLabv3+. With `box_channels`, it is the ancillary net p_anc(y|x,b) and needs boxes."""

    def __init__(
        self,
        spec: ModelSpec,
        num_classes: int,
        box_channels: int | None = None,
        pretrained: str = "none",
        box_path: BoxPathSpec | None = None,
    ):
        super().__init__()
        box_path = box_path or BoxPathSpec()
        direct = box_channels if box_channels and box_path.direct else 0
        self.backbone = build_backbone(spec.backbone, spec.output_stride, pretrained)
        rates = (6, 12, 18) if spec.output_stride == 16 else (12, 24, 36)
        self.aspp = ASPP(self.backbone.high_channels, rates, spec.aspp_channels)
        self.skip = nn.Sequential(
            nn.Conv2d(self.backbone.low_channels, spec.skip_channels, 1, bias=False),
            nn.BatchNorm2d(spec.skip_channels),
            nn.ReLU(inplace=True),
        )
        c = spec.decoder_channels
        self.decoder = nn.Sequential(
            nn.Conv2d(
                spec.aspp_channels + spec.skip_channels + direct, c, 3, padding=1, bias=False
            ),
            nn.BatchNorm2d(c),
            nn.ReLU(inplace=True),
            nn.Conv2d(c, c, 3, padding=1, bias=False),
            nn.BatchNorm2d(c),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Conv2d(c, num_classes, 1)
        self.box_encoder = (
            BoxEncoder(box_channels, (spec.aspp_channels, spec.skip_channels), box_path.resize)
            if box_channels
            else None
        )
        self.box_direct = bool(direct)

    @property
    def pretrained(self) -> dict | None:
        """What the backbone's pretrained weights filled (None: trained from scratch)."""
        return self.backbone.pretrained

    def forward(self, image: torch.Tensor, boxes: torch.Tensor | None = None) -> torch.Tensor:
        """Logits at the input's resolution (N x K x H x W)."""
        low, high = self.backbone(image)
        deep, skip = self.aspp(high), self.skip(low)
        if self.box_encoder is not None:
            if boxes is None:
                raise ValueError("the ancillary model needs the box tensor")
            a_deep, a_skip = self.box_encoder(boxes, (deep.shape[-2:], skip.shape[-2:]))
            deep, skip = deep * a_deep, skip * a_skip
        deep = F.interpolate(deep, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        parts = [deep, skip]
        if self.box_direct:  # the box tensor itself, at stride 4: boxes can create evidence
            parts.append(resize_boxes(boxes.to(skip.dtype), skip.shape[-2:], "max"))
        logits = self.classifier(self.decoder(torch.cat(parts, dim=1)))
        return F.interpolate(logits, size=image.shape[-2:], mode="bilinear", align_corners=False)
