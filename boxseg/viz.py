"""`boxseg viz`: one picture per weak image, to judge the pseudo-labels before trusting them.

Panels, left to right: the image with the store's boxes (those gen-logits used, with the box
spec it used, less any covering no pixel: the boxes that shaped the pseudo-label); the store's
argmax (the ancillary net's, or
box-fill's / GrabCut's, pseudo-label; void black; made box-consistent at pixel level with the
store's boxes unless gen-logits was told --no-box-constraint, and the title says so); its confidence
(max softmax probability, dark = unsure); with `--model`, q: the target a primary model would
get (linear self-correction at `--alpha`, or its conv merger); the ground truth where a mask
exists.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from boxseg.checkpoint import load_model
from boxseg.data.boxes import pixel_boxes
from boxseg.data.formats import open_dataset
from boxseg.engine import resolve_device
from boxseg.errors import BoxsegError
from boxseg.inference import predict_logits
from boxseg.io import write_image
from boxseg.outputs import output_dir
from boxseg.predict import palette
from boxseg.selfcorr import ConvMerger, linear_combine
from boxseg.store import LogitsStore

TITLE_H = 14  # pixels of caption above each panel


def colourise(
    labels: np.ndarray, colours: np.ndarray, void: np.ndarray | None = None
) -> np.ndarray:
    out = colours[np.clip(labels, 0, len(colours) - 1)]
    if void is not None:
        out[void] = 0
    return out


def panel(picture: np.ndarray, title: str, zoom: int) -> np.ndarray:
    """A zoomed panel with its caption above."""
    big = cv2.resize(picture, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_NEAREST)
    cap = np.full((TITLE_H, big.shape[1], 3), 255, np.uint8)
    cv2.putText(
        cap, title, (2, TITLE_H - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1, cv2.LINE_AA
    )
    return np.concatenate([cap, big], 0)


def render(
    ds,
    split: str,
    store: LogitsStore,
    image_id: str,
    colours: np.ndarray,
    zoom: int,
    primary=None,
    alpha: float = 1.0,
    device=None,
) -> np.ndarray:
    """The picture of one weak image (see the module docstring)."""
    image = ds.read_image(split, image_id)
    anc = store.read_full(store.index(image_id))
    void = torch.isnan(anc).any(0).numpy()
    anc = anc.nan_to_num(0.0)
    prob = torch.softmax(anc, 0)
    boxed = image.copy()
    px = pixel_boxes(*store.read_boxes(store.index(image_id)), *image.shape[:2])
    for (x1, y1, x2, y2), label in zip(px.bounds.tolist(), px.labels, strict=True):
        cv2.rectangle(boxed, (x1, y1), (x2 - 1, y2 - 1), colours[label].tolist(), 1)
    conf = (prob.max(0).values.numpy() * 255).astype(np.uint8)
    heat = cv2.cvtColor(cv2.applyColorMap(conf, cv2.COLORMAP_VIRIDIS), cv2.COLOR_BGR2RGB)
    heat[void] = 0
    constrained = store.rule is not None
    label_title = "pseudo-label (box-consistent)" if constrained else "pseudo-label"
    panels = [
        panel(boxed, "image + boxes", zoom),
        panel(colourise(prob.argmax(0).numpy(), colours, void), label_title, zoom),
        panel(heat, "confidence", zoom),
    ]
    if primary is not None:
        model, meta, merger = primary
        logits = predict_logits(model, meta, image, device)
        if merger is not None:
            with torch.no_grad():
                q = merger(logits[None], anc[None])[0]
            title = "q (conv)"
        else:
            q, title = linear_combine(logits, anc, alpha), f"q (alpha {alpha:g})"
        panels.append(panel(colourise(q.argmax(0).numpy(), colours, void), title, zoom))
    if ds.mask_path(split, image_id).is_file():
        mask = ds.read_mask(split, image_id)
        panels.append(panel(colourise(mask, colours, mask == 255), "ground truth", zoom))
    gap = np.full((panels[0].shape[0], 4, 3), 255, np.uint8)
    row = [p for pair in zip(panels, [gap] * len(panels), strict=True) for p in pair][:-1]
    return np.concatenate(row, 1)


def run_viz(
    data: Path,
    store_location: str,
    out: Path,
    split: str = "train",
    ids: list[str] | None = None,
    num: int = 4,
    model_path: Path | None = None,
    alpha: float = 1.0,
    device: str = "auto",
) -> list[Path]:
    """Write OUT/<id>.png for the chosen weak images; return the paths."""
    ds = open_dataset(data)
    store = LogitsStore.open(store_location)
    if list(store.class_names) != list(ds.class_names):
        raise BoxsegError(f"{store_location}: the store's classes differ from the dataset's")
    chosen = ids or store.image_ids[:num]
    missing = [i for i in chosen if i not in store.image_ids]
    if missing:
        raise BoxsegError(f"{store_location}: no logits for '{missing[0]}' (not a weak image)")
    if num < 1 and not ids:
        raise BoxsegError(f"--num {num}: must be at least 1")
    output_dir(out, "viz", [Path(data)])
    dev = resolve_device(device)
    primary = None
    if model_path is not None:
        model, meta = load_model(model_path, kind="primary", device=dev)
        merger = None
        if "merger_state_dict" in meta:
            merger = ConvMerger(ds.num_classes, meta["merger"]["hidden"])
            merger.load_state_dict(meta["merger_state_dict"])
            merger.eval()
        primary = (model, meta, merger)
    colours = palette(max(ds.num_classes, 2))
    written = []
    for image_id in chosen:
        h = int(store.sizes[store.index(image_id)][0])
        picture = render(ds, split, store, image_id, colours, max(1, 192 // h), primary, alpha, dev)
        path = Path(out) / f"{image_id}.png"
        write_image(path, picture)
        written.append(path)
    return written
