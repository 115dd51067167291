"""Datasets, boxes, F/W splits and joint augmentation."""
