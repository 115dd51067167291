"""`boxseg predict`: class-index PNGs and colour overlays for images, from a primary model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.progress import track

from boxseg.checkpoint import load_model
from boxseg.data.formats import IMAGE_SUFFIXES
from boxseg.engine import resolve_device
from boxseg.errors import BoxsegError
from boxseg.inference import predict_logits
from boxseg.io import read_image, write_image, write_label_png
from boxseg.metrics import class_map
from boxseg.outputs import output_dir


def palette(num_classes: int) -> np.ndarray:
    """The PASCAL VOC colour map (bit-interleaved), one RGB colour per class."""
    colours = np.zeros((num_classes, 3), np.uint8)
    for c in range(num_classes):
        v, r, g, b = c, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= ((v >> 0) & 1) << shift
            g |= ((v >> 1) & 1) << shift
            b |= ((v >> 2) & 1) << shift
            v >>= 3
        colours[c] = (r, g, b)
    return colours


def overlay(
    image: np.ndarray, pred: np.ndarray, colours: np.ndarray, alpha: float = 0.5
) -> np.ndarray:
    """The image blended with the class colours of `pred`."""
    return (image * (1 - alpha) + colours[pred] * alpha).round().astype(np.uint8)


def list_images(source: Path) -> list[Path]:
    if source.is_file():
        return [source]
    if source.is_dir():
        found = sorted(
            p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        )
        if found:
            return found
        raise BoxsegError(f"{source}: no .png or .jpg images in this directory")
    raise BoxsegError(f"{source}: no such image or directory")


def run_predict(
    model_path: Path, source: Path, out: Path, device: str = "auto", quiet: bool = False
) -> list[Path]:
    """Write OUT/<stem>.png (class indices) and OUT/<stem>_overlay.png for each image, in its
    displayed frame (EXIF orientation applied, as `read_image` reads it; docs/formats.md)."""
    source = Path(source)
    images = list_images(source)
    output_dir(out, "predict", [source if source.is_dir() else source.parent])
    dev = resolve_device(device)
    model, meta = load_model(model_path, device=dev)
    if meta["kind"] != "primary":
        raise BoxsegError(
            f"{model_path}: an ancillary model needs boxes; predict takes a "
            "primary model (score an ancillary one with eval)"
        )
    colours = palette(len(meta["class_names"]))
    written = []
    for path in track(images, description="predict", disable=quiet):
        image = read_image(path)
        pred = class_map(predict_logits(model, meta, image, dev)).numpy().astype(np.uint8)
        write_label_png(Path(out) / f"{path.stem}.png", pred)
        write_image(Path(out) / f"{path.stem}_overlay.png", overlay(image, pred, colours))
        written.append(Path(out) / f"{path.stem}.png")
    return written
