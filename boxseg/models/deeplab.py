"""DeepLabv3+ (ASPP + decoder with a low-level skip), optionally with the box encoder."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.segmentation.deeplabv3 import ASPP

from boxseg import distributed
from boxseg.models.backbone import build_backbone
from boxseg.models.box_encoder import BoxEncoder, BoxPathSpec, resize_boxes


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild the network (stored in every checkpoint)."""

    backbone: str = "resnet50"
    output_stride: int = 16
    aspp_channels: int = 256
    decoder_channels: int = 256
    skip_channels: int = 48

    def to_dict(self) -> dict:
        return asdict(self)


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


def build_model(
    spec: ModelSpec,
    num_classes: int,
    box_channels: int | None = None,
    pretrained: str = "none",
    box_path: BoxPathSpec | None = None,
) -> DeepLabV3Plus:
    """A primary net (no `box_channels`) or an ancillary net with the box path `box_path`."""
    return DeepLabV3Plus(spec, num_classes, box_channels, pretrained, box_path)


def say_pretrained(model: DeepLabV3Plus, quiet: bool = False) -> None:
    """Print which pretrained weights filled how much of the backbone (rank 0, not quiet)."""
    loaded = model.backbone.pretrained
    if loaded and not quiet and distributed.is_main():
        print(
            f"pretrained: {loaded['tensors_filled']} of the backbone's {loaded['tensors']} "
            f"tensors from {loaded['source']}"
        )
