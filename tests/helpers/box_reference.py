"""The weak-box projection term and the box prior as they were before issue 41 (commit
5d539a4): over all boxes at once, with N x B x H x W tensors. The package now computes both
in memory linear in pixels (box_losses.py, box_constraint.py); the tests check it against
these, value for value and gradient for gradient, on random inputs made here.

Copied verbatim: `shows_whole`, `_dice_to_ones`, `projection_loss` (box_losses.py), and
`smallest`, `bias` (box_constraint.py's `ConstraintRule._smallest` and `.bias`, as functions
of the rule); `box_maxima` is the two lines of `projection_loss` that make the maxima."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from boxseg.box_constraint import BoxEvidence, ConstraintRule, item_evidence, pad_boxes
from boxseg.data.torchsets import AugmentSpec, crop_evidence


def shows_whole(src: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """N x B bool: the crop's source rows (N x H; -1 padding) reach both ends of [lo, hi) (N x
    B), up to the sampling step of a downscaled crop."""
    shown = src >= 0
    big = torch.iinfo(src.dtype).max
    first = torch.where(shown, src, big).amin(-1, keepdim=True)
    last = src.amax(-1, keepdim=True)
    step = ((last - first).float() / (shown.sum(-1, keepdim=True) - 1).clamp_min(1)).ceil()
    return (first <= lo + step) & (last >= hi - 1 - step) & shown.any(-1, keepdim=True)


def _dice_to_ones(pred: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """1 - dice(pred, 1) over the positions `where` (last dimension), BoxInst's squared form."""
    w = where.float()
    inter = (pred * w).sum(-1)
    return 1 - 2 * inter / ((pred * pred * w).sum(-1) + w.sum(-1)).clamp_min(1e-6)


Extents = tuple[torch.Tensor, torch.Tensor]  # BoxEvidence.extents: (in_rows, in_cols)


def projection_loss(
    probs: torch.Tensor, ev: BoxEvidence, extents: Extents | None = None
) -> torch.Tensor:
    """Tightness: mean over boxes and axes of the dice loss between the max-projection of the
    box class's probability (N x K x H x W) inside the box and the box's extent (all ones).
    `extents`: `ev.extents()` if the caller has them already (the box constraint's pixels)."""
    n, _, h, w = probs.shape
    in_rows, in_cols = ev.extents() if extents is None else extents
    labels = ev.labels.clamp_min(0)
    p = probs.gather(1, labels[..., None, None].expand(-1, -1, h, w))  # N x B x H x W
    col_max = (p * in_rows[..., :, None]).amax(2)  # per column, over the box's rows
    row_max = (p * in_cols[..., None, :]).amax(3)  # per row, over the box's columns
    real = ev.labels >= 0
    use_x = real & in_cols.any(-1) & shows_whole(ev.rows, ev.bounds[..., 1], ev.bounds[..., 3])
    use_y = real & in_rows.any(-1) & shows_whole(ev.cols, ev.bounds[..., 0], ev.bounds[..., 2])
    loss = (_dice_to_ones(col_max, in_cols) * use_x).sum()
    loss = loss + (_dice_to_ones(row_max, in_rows) * use_y).sum()
    return loss / (use_x.sum() + use_y.sum()).clamp_min(1)


def box_maxima(probs: torch.Tensor, ev: BoxEvidence) -> tuple[torch.Tensor, torch.Tensor]:
    """(col_max N x B x W, row_max N x B x H) as `projection_loss` above computes them."""
    n, _, h, w = probs.shape
    in_rows, in_cols = ev.extents()
    labels = ev.labels.clamp_min(0)
    p = probs.gather(1, labels[..., None, None].expand(-1, -1, h, w))  # N x B x H x W
    col_max = (p * in_rows[..., :, None]).amax(2)  # per column, over the box's rows
    row_max = (p * in_cols[..., None, :]).amax(3)  # per row, over the box's columns
    return col_max, row_max


def smallest(self: ConstraintRule, ev: BoxEvidence) -> torch.Tensor:
    """N x K x H x W one-hot of the class of the smallest box covering each pixel (box-fill's
    painting order: among equal areas the later box), zeros where none covers it."""
    b = ev.bounds.float()
    area = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    area = torch.where(ev.labels >= 0, area, torch.inf)
    in_rows, in_cols = ev.extents()
    inside = in_rows[..., :, None] & in_cols[..., None, :]  # N x B x H x W
    score = torch.where(inside, area[..., None, None], torch.inf).flip(1)  # later first
    best = score.argmin(1)  # N x H x W, index into the flipped boxes
    label = ev.labels.flip(1).gather(1, best.flatten(1)).view_as(best)
    hit = torch.isfinite(score.amin(1)) & (label >= 0)
    return F.one_hot(label.clamp_min(0), self.num_classes).permute(0, 3, 1, 2) * hit[:, None]


def bias(self: ConstraintRule, ev: BoxEvidence) -> torch.Tensor:
    """N x K x H x W float32: 0 allowed, -penalty not, +prior on the smallest box's class;
    NaN (void) where no box covers a pixel, with `void_uncovered` (no background class and
    every class boxed: `rule_of` refuses it otherwise)."""
    bias = torch.where(self.allowed(ev), 0.0, -self.penalty)
    if self.prior:
        bias = bias + self.prior * smallest(self, ev)
    if self.void_uncovered and self.background is None and not self.free:
        bias = bias.masked_fill(~self.covered(ev)[:, None], torch.nan)
    return bias


# --- random inputs to compare them on ---


def random_boxes(rng: np.random.Generator, count: int, height: int, width: int, classes: int):
    """`count` boxes (xyxy) of a few sizes, so many share an area (2 x 3, 3 x 2, 6 x 1), half
    on whole pixels and half fractional, overlapping, some at the image's edges or spanning
    it, some covering no pixel (zero width or height); labels in [0, classes)."""
    bw = rng.choice([0, 0.4, 1, 2, 3, 6, width], count)
    bh = rng.choice([0, 0.6, 1, 2, 3, 6, height], count)
    x1, y1 = rng.uniform(-1, width, count), rng.uniform(-1, height, count)
    whole = rng.random(count) < 0.5
    x1, y1 = np.where(whole, np.round(x1), x1), np.where(whole, np.round(y1), y1)
    boxes = np.stack([x1, y1, x1 + bw, y1 + bh], 1)
    boxes = boxes.clip(0, [width, height, width, height]).astype(np.float32)
    return boxes, rng.integers(0, classes, count)


def random_evidence(
    rng: np.random.Generator,
    n: int,
    height: int,
    width: int,
    classes: int,
    count: int,
    crop: int | None = None,
) -> BoxEvidence:
    """A batch of n items' evidence: whole height x width images (`crop` None) or crops as
    training cuts them (scaled 0.5-2x, shifted, padded, flipped); the first item with `count`
    boxes, the others with fewer (padding boxes), boxes a crop does not show left out."""
    items = []
    for i in range(n):
        drawn = count if i == 0 else int(rng.integers(0, count + 1))
        boxes, labels = random_boxes(rng, drawn, height, width, classes)
        if crop is None:
            items.append(item_evidence(boxes, labels, height, width))
        else:
            params = AugmentSpec(crop, (0.5, 2.0)).draw(rng, height, width)
            items.append(crop_evidence(boxes, labels, height, width, params, crop))
    bounds, labels = pad_boxes([x["box_bounds"] for x in items], [x["box_labels"] for x in items])
    rows = torch.stack([x["src_rows"] for x in items])
    cols = torch.stack([x["src_cols"] for x in items])
    return BoxEvidence(bounds, labels, rows, cols)
