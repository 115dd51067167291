"""The one place that builds a network from its ModelSpec."""

from __future__ import annotations

from torch import nn

from boxseg import distributed
from boxseg.models.box_encoder import BoxPathSpec
from boxseg.models.deeplab import DeepLabV3Plus
from boxseg.models.spec import OWN, ModelSpec


def build_model(
    spec: ModelSpec,
    num_classes: int,
    box_channels: int | None = None,
    pretrained: str = "none",
    box_path: BoxPathSpec | None = None,
) -> nn.Module:
    """A primary net (no `box_channels`) or an ancillary net with the box path `box_path`:
    forward(image, boxes=None) -> logits at the image's size, `.pretrained` saying what the
    starting weights filled."""
    spec.validate()
    if spec.arch == OWN:
        return DeepLabV3Plus(spec, num_classes, box_channels, pretrained, box_path)
    from boxseg.models.smp_net import SmpNet  # imports smp (and timm) only when asked for

    return SmpNet(
        spec.arch,
        spec.backbone,
        num_classes,
        box_channels,
        spec.output_stride,
        spec.decoder_channels,
        pretrained,
        box_path,
    )


def say_pretrained(model: nn.Module, quiet: bool = False) -> None:
    """Print which pretrained weights filled how much of the encoder (rank 0, not quiet)."""
    loaded = model.pretrained
    if loaded and not quiet and distributed.is_main():
        print(
            f"pretrained: {loaded['tensors_filled']} of the encoder's {loaded['tensors']} "
            f"tensors from {loaded['source']}"
        )
