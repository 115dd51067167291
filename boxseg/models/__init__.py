"""Segmentation networks: torchvision backbones, DeepLabv3+, and the box encoder."""

from boxseg.models.box_encoder import BoxPathSpec
from boxseg.models.deeplab import DeepLabV3Plus, ModelSpec, build_model, say_pretrained

__all__ = ["BoxPathSpec", "DeepLabV3Plus", "ModelSpec", "build_model", "say_pretrained"]
