"""A generated dataset for the demo and the tests: textured shapes on cluttered backgrounds.

Classes: background, disc, square, triangle, ring. An object's colour and texture are drawn
at random, independently of its class, so only its shape tells the class; the background has
colour gradients, lines and blobs. Boxes make the task much easier, which is the point.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from boxseg.io import write_image, write_label_png

CLASSES = ("background", "disc", "square", "triangle", "ring")


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Two random colours mixed by stripes at a random angle, or by blotchy noise."""
    c1, c2 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    if rng.random() < 0.5:
        yy, xx = np.mgrid[0:h, 0:w]
        angle, period = rng.uniform(0, np.pi), rng.uniform(3, 8)
        t = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period) > 0
        t = t.astype(np.float32)
    else:
        small = rng.random((max(h // 4, 2), max(w // 4, 2))).astype(np.float32)
        t = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    return (c1 + (c2 - c1) * t[..., None]).astype(np.float32)


def _class_texture(rng: np.random.Generator, cls: int, h: int, w: int) -> np.ndarray:
    """A texture family per class (colours still random): stripes, checks, flat, dots."""
    c1, c2 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    yy, xx = np.mgrid[0:h, 0:w]
    period = rng.uniform(3, 6)
    if cls == 1:
        angle = rng.uniform(0, np.pi)
        t = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period) > 0
    elif cls == 2:
        t = (np.floor(xx / period) + np.floor(yy / period)) % 2 > 0
    elif cls == 3:
        t = np.zeros((h, w), bool)
    else:
        t = (np.sin(xx * 2 * np.pi / period) + np.sin(yy * 2 * np.pi / period)) > 1.2
    return (c1 + (c2 - c1) * t.astype(np.float32)[..., None]).astype(np.float32)


def _background(rng: np.random.Generator, h: int, w: int, clutter: bool = True) -> np.ndarray:
    c1, c2 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    ramp = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
    img = np.repeat(c1 + (c2 - c1) * ramp, h, axis=0).astype(np.uint8)
    img = np.ascontiguousarray(img)
    if not clutter:
        return img
    for _ in range(int(rng.integers(4, 9))):
        p1, p2 = rng.integers(0, [w, h]), rng.integers(0, [w, h])
        color = tuple(int(v) for v in rng.integers(0, 256, 3))
        cv2.line(img, tuple(map(int, p1)), tuple(map(int, p2)), color, int(rng.integers(1, 3)))
    for _ in range(int(rng.integers(2, 6))):
        center = tuple(int(v) for v in rng.integers(0, [w, h]))
        axes = tuple(int(v) for v in rng.integers(2, 6, 2))
        color = tuple(int(v) for v in rng.integers(0, 256, 3))
        cv2.ellipse(img, center, axes, float(rng.uniform(0, 180)), 0, 360, color, -1)
    return img


def _shape_mask(rng: np.random.Generator, cls: int, h: int, w: int, size: int) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    cx, cy = (
        int(rng.integers(size // 2, w - size // 2)),
        int(rng.integers(size // 2, h - size // 2)),
    )
    r = size // 2
    if cls == 1:
        cv2.circle(m, (cx, cy), r, 1, -1)
    elif cls == 2:
        box = cv2.boxPoints(((cx, cy), (size * 0.85, size * 0.85), float(rng.uniform(0, 90))))
        cv2.fillPoly(m, [np.round(box).astype(np.int32)], 1)
    elif cls == 3:
        a = rng.uniform(0, 2 * np.pi)
        pts = [
            (cx + r * np.cos(a + k * 2 * np.pi / 3), cy + r * np.sin(a + k * 2 * np.pi / 3))
            for k in range(3)
        ]
        cv2.fillPoly(m, [np.round(np.array(pts)).astype(np.int32)], 1)
    else:
        cv2.circle(m, (cx, cy), r, 1, max(2, size // 5))
    return m.astype(bool)


def make_sample(
    rng: np.random.Generator,
    h: int = 64,
    w: int = 64,
    class_texture: bool = False,
    clutter: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """One (image HxWx3 uint8, mask HxW uint8) pair with 1-3 objects. `class_texture`: each
    object wears its class's texture family (else a random texture); `clutter`: lines and
    blobs on the background."""
    img = _background(rng, h, w, clutter).astype(np.float32)
    mask = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(1, 4))):
        cls = int(rng.integers(1, len(CLASSES)))
        shape = _shape_mask(rng, cls, h, w, int(rng.integers(min(h, w) // 4, min(h, w) // 2)))
        texture = _class_texture(rng, cls, h, w) if class_texture else _texture(rng, h, w)
        img[shape] = texture[shape]
        mask[shape] = cls
    img += rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), mask


def write_synthetic(
    root: Path,
    num_train: int = 120,
    num_val: int = 40,
    size: int = 64,
    seed: int = 0,
    class_texture: bool = False,
    clutter: bool = True,
) -> Path:
    """Write the dataset in the segnet layout (with classes.txt) under `root`."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    (root / "classes.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    for split, n in (("train", num_train), ("val", num_val)):
        ids = [f"{split}_{i:04d}" for i in range(n)]
        for image_id in ids:
            image, mask = make_sample(rng, size, size, class_texture, clutter)
            write_image(root / split / f"{image_id}.png", image)
            write_label_png(root / f"{split}annot" / f"{image_id}.png", mask)
        (root / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root
