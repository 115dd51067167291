"""torchvision backbones cut into a low-level part (stride 4) and a deep part (stride 8/16)."""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn

from boxseg.errors import BoxsegError

BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "mobilenet_v3_large")


class Backbone(nn.Module):
    """Returns (low-level features at stride 4, deep features at the output stride).
    `pretrained`: what weights were loaded (source, tensors filled of the backbone's), or
    None."""

    def __init__(
        self,
        low: nn.Module,
        high: nn.Module,
        low_channels: int,
        high_channels: int,
        pretrained: dict | None = None,
    ):
        super().__init__()
        self.low, self.high = low, high
        self.low_channels, self.high_channels = low_channels, high_channels
        self.pretrained = pretrained

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


HEADS = ("fc.", "classifier.")  # the classification head: not part of the backbone
MIN_FILLED = 0.95  # a weights file must fill (and be used for) nearly all backbone tensors


def _weights(name: str, pretrained: str):
    """torchvision weights for 'imagenet' or a name such as 'ResNet50_Weights.IMAGENET1K_V2'."""
    if pretrained == "imagenet":
        return torchvision.models.get_model_weights(name).DEFAULT
    try:
        return torchvision.models.get_weight(pretrained)
    except (ValueError, KeyError, AttributeError) as e:
        raise BoxsegError(f"--pretrained {pretrained}: unknown torchvision weights name") from e


def _body(state: dict) -> dict:
    """The tensors of a state dict that belong to the backbone (not the classification head)."""
    return {k: v for k, v in state.items() if not k.startswith(HEADS)}


def _fit(state: dict, own: dict) -> dict:
    return {k: v for k, v in state.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}


def looks_like(state: dict) -> str:
    """The torchvision backbone whose tensors (names and shapes) a state dict matches best."""
    body = _body(state)
    best, best_score = "none of boxseg's backbones", 0.0
    for name in BACKBONES:
        own = _body(getattr(torchvision.models, name)(weights=None).state_dict())
        score = len(_fit(body, own)) / max(len(own), len(body), 1)
        if score > best_score:
            best, best_score = f"a torchvision {name}", score
    return best


def _load_file(net: nn.Module, name: str, path: str) -> dict:
    """Load a local state dict into `net`, refusing one that does not fill nearly all of the
    backbone's tensors or is mostly unused (another architecture); returns the report."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise BoxsegError(f"{path}: not a readable state dict ({e})") from e
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise BoxsegError(f"{path}: not a state dict of tensors")
    own = net.state_dict()
    usable = _fit(state, own)
    if not usable:
        raise BoxsegError(f"{path}: no weights in it fit a torchvision {name}")
    body, own_body, used = _body(state), _body(own), _body(usable)
    filled, of = len(used), len(own_body)
    if filled < MIN_FILLED * of or filled < MIN_FILLED * len(body):
        unused = len(body) - filled
        left = f" ({unused} of the file's {len(body)} left unused)" if unused else ""
        raise BoxsegError(
            f"{path}: fills {filled} of the {of} tensors of a {name} backbone{left}; it looks "
            f"like {looks_like(state)} (pick that --encoder, or another file)"
        )
    net.load_state_dict(usable, strict=False)
    return {"source": str(path), "tensors_filled": filled, "tensors": of}


def _download(factory, name: str, pretrained: str) -> nn.Module:
    """torchvision's weights (from torch's hub cache, or downloaded into it)."""
    weights = _weights(name, pretrained)
    try:
        return factory(weights=weights)
    except (OSError, RuntimeError) as e:  # URLError is an OSError; a cut download a RuntimeError
        cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        raise BoxsegError(
            f"--pretrained {pretrained}: cannot get {weights.url} ({getattr(e, 'reason', e)}); "
            f"put that file at {cache}, or pass --pretrained with a local state dict file"
        ) from e


def _classifier_net(name: str, pretrained: str) -> tuple[nn.Module, dict | None]:
    """The torchvision classification network, with pretrained weights loaded if asked for,
    and what was loaded (None without weights)."""
    if name not in BACKBONES:
        raise BoxsegError(f"unknown backbone '{name}' (choose from {', '.join(BACKBONES)})")
    factory = getattr(torchvision.models, name)
    if pretrained == "none":
        return factory(weights=None), None
    if Path(pretrained).is_file():
        net = factory(weights=None)
        return net, _load_file(net, name, pretrained)
    if pretrained != "imagenet" and "_Weights." not in pretrained:
        raise BoxsegError(
            f"--pretrained {pretrained}: not none, imagenet, a weights name or a file"
        )
    net = _download(factory, name, pretrained)
    n = len(_body(net.state_dict()))
    return net, {"source": str(_weights(name, pretrained)), "tensors_filled": n, "tensors": n}


def build_backbone(name: str, output_stride: int = 16, pretrained: str = "none") -> Backbone:
    """A torchvision backbone cut at stride 4 (skip) and dilated to the output stride."""
    if output_stride not in (8, 16):
        raise BoxsegError(f"--output-stride {output_stride}: must be 8 or 16")
    net, loaded = _classifier_net(name, pretrained)
    if name.startswith("resnet"):
        low = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1)
        high = nn.Sequential(net.layer2, net.layer3, net.layer4)
        if output_stride == 8:
            dilate(net.layer3, 2)
            dilate(net.layer4, 4)
        else:
            dilate(net.layer4, 2)
        return Backbone(low, high, net.fc.in_features // 8, net.fc.in_features, loaded)
    # mobilenet_v3_large: blocks 2, 4, 7, 13 downsample (stride 4, 8, 16, 32)
    f = net.features
    if output_stride == 8:
        dilate(f[7:13], 2)
        dilate(f[13:], 4)
    else:
        dilate(f[13:], 2)
    return Backbone(f[:4], f[4:], f[3].out_channels, f[-1].out_channels, loaded)
