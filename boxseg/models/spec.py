"""What a network is: ModelSpec, stored in every checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from boxseg.errors import BoxsegError

OWN = "boxseg"  # --arch of boxseg's own DeepLabv3+ (torchvision backbones, dense ASPP)


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild the network (stored in every checkpoint).

    `arch` boxseg: boxseg's own DeepLabv3+ over the torchvision backbone `backbone`; any other
    value: that segmentation_models.pytorch architecture (deeplabv3plus, unet, fpn ...) over
    the smp encoder `backbone` (resnet18, efficientnet-b0, tu-convnext_atto ...; `--encoder`).
    The DeepLab family reads `output_stride` and `decoder_channels`; boxseg's own also
    `aspp_channels` and `skip_channels`. Checkpoints from before `arch` existed are boxseg's."""

    backbone: str = "resnet50"
    output_stride: int = 16
    aspp_channels: int = 256
    decoder_channels: int = 256
    skip_channels: int = 48
    arch: str = OWN

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        """One-line errors for values no network takes (names are checked when built)."""
        if self.output_stride not in (8, 16):
            raise BoxsegError(f"--output-stride {self.output_stride}: must be 8 or 16")

    def describe(self) -> str:
        """What a person would call it: 'boxseg DeepLabv3+ resnet50', 'smp unet resnet18'."""
        if self.arch == OWN:
            return f"boxseg DeepLabv3+ {self.backbone}"
        return f"smp {self.arch} {self.backbone}"
