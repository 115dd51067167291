"""Box-consistent ancillary logits: what the boxes say for certain, applied at decoding time.

A weak image's boxes are hard evidence (docs/method.md, "beyond the paper"):
- a class that gets boxes can only be where a box of that class covers the pixel;
- the dataset's background class, and classes that never get boxes (stuff classes when
  `--box-classes` lists things only), may be anywhere;
- where no box covers a pixel of a dataset without a background class, the net decides alone.
Where boxes of several classes overlap, the net chooses among them; `prior` adds a bonus to
the logit of the class of the smallest covering box (the box-fill rule as a soft prior; 0 =
the net alone).

The rule is an additive bias on the logits: 0 where a class is allowed, -`NEG` where it is not,
+`prior` for the smallest box's class. `NEG` is finite so the logits stay finite through
float16 storage, pooling and interpolation, and large enough that a forbidden class never wins.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from boxseg.box_labels import painting_order
from boxseg.errors import BoxsegError

NEG = 1e4  # the penalty of a class that no box allows (logits are O(10))


@dataclass(frozen=True)
class BoxConstraint:
    """Whether ancillary logits are made box-consistent, and the smaller-box prior's weight."""

    enabled: bool = True
    prior: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        if not 0 <= self.prior <= 100:
            raise BoxsegError(f"--box-prior {self.prior}: must be in [0, 100]")


def free_classes(num_classes: int, background: int | None,
                 box_classes: Sequence[int] | None) -> list[int]:  # fmt: skip
    """Classes allowed everywhere: the background class, and the classes that get no boxes
    (`box_classes` None: every class but the background gets boxes)."""
    boxed = set(range(num_classes)) if box_classes is None else set(box_classes)
    boxed.discard(background)
    return [k for k in range(num_classes) if k not in boxed]


def _pixel_bounds(box: np.ndarray, height: int, width: int) -> tuple[int, int, int, int]:
    """Rounded, clipped pixel bounds (as `rasterize_boxes` rounds them)."""
    x1, y1, x2, y2 = (int(v) for v in np.rint(box))
    return max(x1, 0), max(y1, 0), min(x2, width), min(y2, height)


def box_bias(
    boxes: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    height: int,
    width: int,
    background: int | None,
    box_classes: Sequence[int] | None = None,
    prior: float = 0.0,
) -> np.ndarray:
    """KxHxW float32 bias to add to an ancillary net's logits (see the module docstring)."""
    allowed = np.zeros((num_classes, height, width), bool)
    covered = np.zeros((height, width), bool)
    smallest = np.full((height, width), -1, np.int64)  # class of the smallest covering box
    for k in painting_order(boxes):  # largest first, so the smallest ends on top
        x1, y1, x2, y2 = _pixel_bounds(boxes[k], height, width)
        if x2 <= x1 or y2 <= y1:
            continue
        allowed[int(labels[k]), y1:y2, x1:x2] = True
        covered[y1:y2, x1:x2] = True
        smallest[y1:y2, x1:x2] = int(labels[k])
    allowed[free_classes(num_classes, background, box_classes)] = True
    if background is None:
        allowed[:, ~covered] = True  # no box here and no background class: the net decides
    bias = np.where(allowed, 0.0, -NEG).astype(np.float32)
    if prior:
        ys, xs = np.nonzero(smallest >= 0)
        bias[smallest[ys, xs], ys, xs] += np.float32(prior)
    return bias


def pool_bias(bias: torch.Tensor, stride: int) -> torch.Tensor:
    """KxHxW (or NxKxHxW) bias -> the store's grid (as `store.pool_logits` pads): the max over
    each cell, so a class is allowed in a cell if any of its pixels allows it (thin boxes
    survive)."""
    if stride == 1:
        return bias
    h, w = bias.shape[-2:]
    ph, pw = -h % stride, -w % stride
    x = bias if bias.dim() == 4 else bias[None]
    x = F.pad(x, (0, pw, 0, ph), mode="replicate") if (ph or pw) else x
    out = F.max_pool2d(x, stride)
    return out if bias.dim() == 4 else out[0]


@dataclass(frozen=True)
class BiasMaker:
    """(boxes, labels, height, width) -> KxHxW bias tensor for one model's classes; a plain
    picklable object, so DataLoader workers can make the bias of their crops."""

    num_classes: int
    background: int | None
    box_classes: tuple[int, ...] | None
    prior: float

    def __call__(self, boxes: np.ndarray, labels: np.ndarray, height: int,
                 width: int) -> torch.Tensor:  # fmt: skip
        bias = box_bias(boxes, labels, self.num_classes, height, width, self.background,
                        self.box_classes, self.prior)  # fmt: skip
        return torch.from_numpy(bias)


def constraint_of(meta: dict, rule: BoxConstraint | None) -> BiasMaker | None:
    """The bias maker for the ancillary model in `meta`, or None when the rule is off (or the
    model is not an ancillary one)."""
    if rule is None or not rule.enabled or meta.get("kind") != "ancillary":
        return None
    classes = (meta.get("boxes") or {}).get("classes")
    return BiasMaker(len(meta["class_names"]), meta.get("background"),
                     tuple(classes) if classes else None, rule.prior)  # fmt: skip
