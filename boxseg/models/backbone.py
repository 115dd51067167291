"""torchvision backbones cut into a low-level part (stride 4) and a deep part (stride 8/16)."""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn

from boxseg.errors import BoxsegError

BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "mobilenet_v3_large")


class Backbone(nn.Module):
    """Returns (low-level features at stride 4, deep features at the output stride)."""

    def __init__(self, low: nn.Module, high: nn.Module, low_channels: int, high_channels: int):
        super().__init__()
        self.low, self.high = low, high
        self.low_channels, self.high_channels = low_channels, high_channels

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low = self.low(x)
        return low, self.high(low)


def dilate(module: nn.Module, rate: int) -> None:
    """Replace strides by dilation in every conv of `module` (as segmentation_models.pytorch)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            m.stride = (1, 1)
            m.dilation = (rate, rate)
            kh, kw = m.kernel_size
            m.padding = ((kh // 2) * rate, (kw // 2) * rate)


def _weights(name: str, pretrained: str):
    """torchvision weights for 'imagenet' or a name such as 'ResNet50_Weights.IMAGENET1K_V2'."""
    if pretrained == "imagenet":
        return torchvision.models.get_model_weights(name).DEFAULT
    try:
        return torchvision.models.get_weight(pretrained)
    except (ValueError, KeyError, AttributeError) as e:
        raise BoxsegError(f"--pretrained {pretrained}: unknown torchvision weights name") from e


def _classifier_net(name: str, pretrained: str) -> nn.Module:
    """The torchvision classification network, with pretrained weights loaded if asked for."""
    if name not in BACKBONES:
        raise BoxsegError(f"unknown backbone '{name}' (choose from {', '.join(BACKBONES)})")
    factory = getattr(torchvision.models, name)
    if pretrained == "none":
        return factory(weights=None)
    if Path(pretrained).is_file():
        net = factory(weights=None)
        try:
            state = torch.load(pretrained, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unreadable file is the user's to fix
            raise BoxsegError(f"{pretrained}: not a readable state dict ({e})") from e
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        own = net.state_dict()
        usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        if not usable:
            raise BoxsegError(f"{pretrained}: no weights in it fit a torchvision {name}")
        net.load_state_dict(usable, strict=False)
        return net
    if pretrained != "imagenet" and "_Weights." not in pretrained:
        raise BoxsegError(
            f"--pretrained {pretrained}: not none, imagenet, a weights name or a file"
        )
    return factory(weights=_weights(name, pretrained))


def build_backbone(name: str, output_stride: int = 16, pretrained: str = "none") -> Backbone:
    """A torchvision backbone cut at stride 4 (skip) and dilated to the output stride."""
    if output_stride not in (8, 16):
        raise BoxsegError(f"--output-stride {output_stride}: must be 8 or 16")
    net = _classifier_net(name, pretrained)
    if name.startswith("resnet"):
        low = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1)
        high = nn.Sequential(net.layer2, net.layer3, net.layer4)
        if output_stride == 8:
            dilate(net.layer3, 2)
            dilate(net.layer4, 4)
        else:
            dilate(net.layer4, 2)
        return Backbone(low, high, net.fc.in_features // 8, net.fc.in_features)
    # mobilenet_v3_large: blocks 2, 4, 7, 13 downsample (stride 4, 8, 16, 32)
    f = net.features
    if output_stride == 8:
        dilate(f[7:13], 2)
        dilate(f[13:], 4)
    else:
        dilate(f[13:], 2)
    return Backbone(f[:4], f[4:], f[3].out_channels, f[-1].out_channels)
