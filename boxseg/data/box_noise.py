"""Boxes as people draw them: one seeded model of box imprecision.

Annotators draw loose boxes, labelling tools and detectors shift edges, small and occluded
objects go unboxed and a hurried click picks the wrong class. `noisy_boxes` makes exact boxes
imprecise in those four ways, each a fraction: of the box's side (shift, grow) or of the boxes
(drop, flip). The benchmark (benchmarks/box_noise.py) corrupts W's boxes with it; `train-anc
--box-noise` uses the same function on F's boxes as augmentation, so the ancillary net learns
that a box edge is a hint, not a wall.

Order: grow, then shift each edge, then drop, then flip; boxes stay inside the image and at
least one pixel wide and high.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, fields

import numpy as np

from boxseg.errors import BoxsegError


@dataclass(frozen=True)
class BoxNoise:
    """How imprecise boxes are. All zero: exact boxes, returned unchanged.

    shift: each edge moves by up to this fraction of the box's side (uniform, either way);
    grow: each side is this fraction longer (loose boxes), centred;
    drop: this fraction of the boxes is missing (each box independently);
    flip: this fraction of the boxes carries another class (uniform over the others).
    """

    shift: float = 0.0
    grow: float = 0.0
    drop: float = 0.0
    flip: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if not (np.isfinite(v) and v >= 0) or (f.name in ("drop", "flip") and v > 1):
                limits = "between 0 and 1" if f.name in ("drop", "flip") else "0 or more"
                raise BoxsegError(f"box noise {f.name}={v}: must be {limits}")
        if self.shift >= 0.5:
            raise BoxsegError(
                f"box noise shift={self.shift}: must be below 0.5 (two edges "
                "moving half the side towards each other leave no box)"
            )

    @property
    def active(self) -> bool:
        return any(getattr(self, f.name) > 0 for f in fields(self))

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict | None) -> BoxNoise:
        return (
            BoxNoise(**{f.name: float(d.get(f.name, 0.0)) for f in fields(BoxNoise)})
            if d
            else BoxNoise()
        )

    def describe(self) -> str:
        parts = [
            f"{f.name}={getattr(self, f.name):g}" for f in fields(self) if getattr(self, f.name)
        ]
        return ",".join(parts) or "off"


LEVELS = {
    "off": BoxNoise(),
    "shift10": BoxNoise(shift=0.10),
    "shift25": BoxNoise(shift=0.25),
    "loose15": BoxNoise(grow=0.15),
    "missing20": BoxNoise(drop=0.20),
    "mixed": BoxNoise(shift=0.10, grow=0.10, drop=0.10),
}


def parse_box_noise(text: str) -> BoxNoise:
    """A named level (`LEVELS`: off, shift10, shift25, loose15, missing20, mixed) or
    `key=value` pairs separated by commas (shift=0.1,grow=0.1,drop=0.1,flip=0.05)."""
    text = text.strip()
    if text in LEVELS:
        return LEVELS[text]
    names = {f.name for f in fields(BoxNoise)}
    values: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq or key not in names:
            raise BoxsegError(
                f"--box-noise {text!r}: use a level ({', '.join(LEVELS)}) or "
                f"key=value pairs with keys {', '.join(sorted(names))}"
            )
        try:
            values[key] = float(value)
        except ValueError as e:
            raise BoxsegError(f"--box-noise {text!r}: {key}={value!r} is not a number") from e
    return BoxNoise(**values)


def image_rng(seed: int, image_id: str) -> np.random.Generator:
    """A generator for one image's noise: the same for the same (seed, image id) in any process
    and any order of images."""
    digest = hashlib.sha256(image_id.encode()).digest()
    return np.random.default_rng((seed, int.from_bytes(digest[:8], "little")))


def noisy_boxes(
    boxes: np.ndarray,
    labels: np.ndarray,
    height: int,
    width: int,
    noise: BoxNoise,
    rng: np.random.Generator,
    classes: tuple[int, ...] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """`boxes` (N x 4 xyxy pixels, x2/y2 exclusive) and `labels` made imprecise by `noise`,
    drawn from `rng`; `classes`: the labels a flipped box may take (default: the labels
    present). Returns new arrays (float32 boxes, int64 labels); the inputs are not changed."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4).copy()
    lab = np.asarray(labels, np.int64).copy()
    if not noise.active or len(b) == 0:
        return b.astype(np.float32), lab
    side = np.concatenate([b[:, 2:] - b[:, :2]] * 2, axis=1)  # w, h, w, h
    # every draw is made whatever the level, so two levels with the same seed share their dice
    u_shift = rng.uniform(-1.0, 1.0, size=b.shape)
    u_drop = rng.random(len(b))
    u_flip = rng.random(len(b))
    u_class = rng.random(len(b))
    b += np.array([-1, -1, 1, 1]) * side * noise.grow / 2
    b += u_shift * side * noise.shift
    b = np.clip(b, 0, [width, height, width, height])
    far = np.minimum(np.maximum(b[:, 2:], b[:, :2] + 1), [width, height])  # >= one pixel
    b = np.concatenate([np.minimum(b[:, :2], far - 1), far], axis=1)
    flip = u_flip < noise.flip
    pool = np.array(sorted(set(classes if classes is not None else lab.tolist())), np.int64)
    for i in np.flatnonzero(flip):
        others = pool[pool != lab[i]]
        if len(others):
            lab[i] = others[min(int(u_class[i] * len(others)), len(others) - 1)]
    keep = u_drop >= noise.drop
    return b[keep].astype(np.float32), lab[keep]
