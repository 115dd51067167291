"""boxseg: semantic segmentation from a few masks and many bounding boxes."""

__version__ = "0.2.0"
