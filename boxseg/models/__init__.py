"""Segmentation networks: boxseg's own DeepLabv3+ over torchvision backbones, any
segmentation_models.pytorch architecture (smp_net.py), and the box encoder both use."""

from boxseg.models.box_encoder import BoxPathSpec
from boxseg.models.build import build_model, say_pretrained
from boxseg.models.deeplab import DeepLabV3Plus
from boxseg.models.spec import OWN, ModelSpec

__all__ = ["OWN", "BoxPathSpec", "DeepLabV3Plus", "ModelSpec", "build_model", "say_pretrained"]
