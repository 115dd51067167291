"""Box-consistent logits: what the boxes say for certain, applied at pixel resolution after
decoding, on every path (stored W crops, online W crops, conv's F inputs, eval, viz, predict).

A weak image's boxes are hard evidence (docs/method.md, "beyond the paper"):
- a class that gets boxes can only be where a box of that class covers the pixel;
- the dataset's background class, and classes that never get boxes (stuff classes when
  `--box-classes` lists things only), may be anywhere;
- where no box covers a pixel of a dataset without a background class, the net decides alone.
Where boxes of several classes overlap, the net chooses among them; `prior` adds a bonus to
the logit of the class of the smallest covering box (the box-fill rule as a soft prior; 0 =
the net alone).

Which pixels a box covers, and which boxes count (those covering at least one), is
`data.boxes.pixel_boxes`, in the original image's pixels; `BoxEvidence.extents` is the one
per-pixel test built on it (the constraint, its prior, the weak-box losses and rank use it).
A pixel of a crop (scaled, shifted, mirrored) is judged by the original pixel it shows: the same
nearest-pixel lookup its mask gets (`BoxEvidence`: per crop row and column, the source row and
column, -1 on padding). So the rule is exact at any stride, dtype and augmentation: the store
keeps what the net said (pooled cells), and the constraint is applied after the cells are
decoded to pixels, never to the cells themselves.

The rule is an additive bias on the logits: 0 where a class is allowed, -`NEG` where it is not,
+`prior` for the smallest box's class; computed on the logits' device, vectorised over boxes
(the prior's 62 at a time), in memory linear in pixels: per-box rows and columns and per-pixel
maps, never a boxes x pixels tensor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from boxseg.data.boxes import pixel_boxes
from boxseg.errors import BoxsegError

NEG = 1e4  # the penalty of a class that no box allows (logits are O(10)): never overruled


def soft_fields(penalty: float, void_uncovered: bool) -> dict:
    """The graceful rule's fields as records hold them: only where they differ from the hard
    rule, so records (and stores) made before they existed read and compare as they were."""
    return ({} if penalty == NEG else {"penalty": penalty}) | (
        {"void_uncovered": True} if void_uncovered else {}
    )


@dataclass(frozen=True)
class BoxConstraint:
    """The user's option: whether logits are made box-consistent, the smaller-box prior, and
    how hard the rule is: `penalty`, the bias of a class no box allows (1e4: certain; a few
    logits: a confident net, and self-correction, can overrule a missing or short box), and
    `void_uncovered`: in a dataset without a
    background class every object should have a box, so a pixel no box covers is where one is
    missing; void there gives it no target instead of the net's unguided guess."""

    enabled: bool = True
    prior: float = 0.0
    penalty: float = NEG
    void_uncovered: bool = False

    def to_dict(self) -> dict:
        return {"enabled": self.enabled, "prior": self.prior} | soft_fields(
            self.penalty, self.void_uncovered
        )

    @staticmethod
    def from_dict(d: dict) -> BoxConstraint:
        return BoxConstraint(
            bool(d.get("enabled", True)),
            float(d.get("prior", 0.0)),
            float(d.get("penalty", NEG)),
            bool(d.get("void_uncovered", False)),
        )

    def validate(self) -> None:
        if not 0 <= self.prior <= 100:
            raise BoxsegError(f"--box-prior {self.prior}: must be in [0, 100]")
        if not 0 < self.penalty <= NEG:
            raise BoxsegError(f"--box-penalty {self.penalty:g}: must be in (0, {NEG:g}]")


def free_classes(
    num_classes: int, background: int | None, box_classes: Sequence[int] | None
) -> list[int]:
    """Classes allowed everywhere: the background class, and the classes that get no boxes
    (`box_classes` None: every class but the background gets boxes)."""
    boxed = set(range(num_classes)) if box_classes is None else set(box_classes)
    boxed.discard(background)
    return [k for k in range(num_classes) if k not in boxed]


@dataclass
class BoxEvidence:
    """A batch's boxes, as the constraint reads them (tensors, on one device):
    bounds N x B x 4 int64 pixel bounds (x1, y1, x2, y2; `pixel_boxes`) in each original
    image, labels N x B int64 (-1: padding), rows N x H and cols N x W int64: the original
    image's row / column each output row / column shows (-1: padding, outside every box).
    Over the rows (columns) they show they are monotone, as a crop's lookup makes them
    (`cells.source_pixels`: scaled, shifted, flipped), so the output rows (columns) of a box
    are one run: the weak-box projections rely on it (`box_losses.run_max`)."""

    bounds: torch.Tensor
    labels: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor

    def to(self, device: torch.device | str) -> BoxEvidence:
        return BoxEvidence(
            *(
                t.to(device, non_blocking=True)
                for t in (self.bounds, self.labels, self.rows, self.cols)
            )
        )

    @staticmethod
    def of_batch(batch: dict) -> BoxEvidence:
        """From a training batch's "box_bounds", "box_labels", "src_rows", "src_cols"."""
        return BoxEvidence(
            batch["box_bounds"].long(),
            batch["box_labels"].long(),
            batch["src_rows"].long(),
            batch["src_cols"].long(),
        )

    @staticmethod
    def whole(
        boxes: list[np.ndarray],
        labels: list[np.ndarray],
        height: int,
        width: int,
        device: torch.device | str = "cpu",
    ) -> BoxEvidence:
        """Whole height x width images (no crop), one box array per image."""
        items = [item_evidence(b, lab, height, width) for b, lab in zip(boxes, labels, strict=True)]
        n = len(items)
        bounds, labs = pad_boxes([x["box_bounds"] for x in items], [x["box_labels"] for x in items])
        rows = torch.arange(height).expand(n, height)
        cols = torch.arange(width).expand(n, width)
        return BoxEvidence(bounds, labs, rows, cols).to(device)

    def extents(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(N x B x H, N x B x W) bool: the output rows and columns that show each box's rows
        and columns; output pixel (y, x) lies in box b iff row y and column x both do. The one
        per-pixel test of "is this pixel in the box" (padding boxes and rows cover nothing)."""
        real = (self.labels >= 0)[..., None]
        b = self.bounds[..., None]
        rows, cols = self.rows[:, None, :], self.cols[:, None, :]
        in_rows = (rows >= b[:, :, 1]) & (rows < b[:, :, 3]) & (rows >= 0) & real
        in_cols = (cols >= b[:, :, 0]) & (cols < b[:, :, 2]) & (cols >= 0) & real
        return in_rows, in_cols


def item_evidence(
    boxes: np.ndarray,
    labels: np.ndarray,
    height: int,
    width: int,
    rows: np.ndarray | None = None,
    cols: np.ndarray | None = None,
) -> dict[str, torch.Tensor]:
    """One training item's share of a `BoxEvidence`: its boxes' pixel bounds in the original
    height x width image (only the boxes the shown rows and columns meet) and the source rows
    and columns (default: all of them, in order). Boxes covering no pixel are left out."""
    px = pixel_boxes(boxes, labels, height, width)
    bounds, labels = px.bounds, px.labels
    rows = np.arange(height) if rows is None else rows
    cols = np.arange(width) if cols is None else cols
    keep = np.ones(len(labels), bool)
    shown_r, shown_c = rows[rows >= 0], cols[cols >= 0]
    if len(shown_r) and len(shown_c):
        keep &= (bounds[:, 1] <= shown_r.max()) & (bounds[:, 3] > shown_r.min())
        keep &= (bounds[:, 0] <= shown_c.max()) & (bounds[:, 2] > shown_c.min())
    return {
        "box_bounds": torch.from_numpy(bounds[keep].astype(np.int32)),
        "box_labels": torch.from_numpy(labels[keep]),
        "src_rows": torch.from_numpy(np.asarray(rows, np.int64)),
        "src_cols": torch.from_numpy(np.asarray(cols, np.int64)),
    }


def pad_boxes(
    bounds: Sequence[torch.Tensor], labels: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Items' B_i x 4 bounds and B_i labels -> N x B x 4 and N x B (labels -1 on padding)."""
    b = max([len(x) for x in labels] + [1])
    out_b = torch.zeros(len(bounds), b, 4, dtype=torch.int64)
    out_l = torch.full((len(labels), b), -1, dtype=torch.int64)
    for k, (bb, ll) in enumerate(zip(bounds, labels, strict=True)):
        out_b[k, : len(ll)] = bb.long()
        out_l[k, : len(ll)] = ll.long()
    return out_b, out_l


@dataclass(frozen=True)
class ConstraintRule:
    """What the constraint needs besides the boxes: the classes, which of them are free
    (allowed everywhere), the background class, the prior. Recorded in a store's attributes,
    so any reader applies the rule the store was made with."""

    num_classes: int
    free: tuple[int, ...]
    background: int | None
    prior: float = 0.0
    penalty: float = NEG  # the bias of a class no box allows
    void_uncovered: bool = False  # no background class: pixels no box covers are void (NaN)

    def to_dict(self) -> dict:
        return {
            "num_classes": self.num_classes,
            "free": list(self.free),
            "background": self.background,
            "prior": self.prior,
        } | soft_fields(self.penalty, self.void_uncovered)

    @staticmethod
    def from_dict(d: dict) -> ConstraintRule:
        return ConstraintRule(
            int(d["num_classes"]),
            tuple(int(k) for k in d["free"]),
            d.get("background"),
            float(d.get("prior", 0.0)),
            float(d.get("penalty", NEG)),
            bool(d.get("void_uncovered", False)),
        )

    @staticmethod
    def of(
        num_classes: int,
        background: int | None,
        box_classes: Sequence[int] | None,
        prior: float = 0.0,
        penalty: float = NEG,
        void_uncovered: bool = False,
    ) -> ConstraintRule:
        free = free_classes(num_classes, background, box_classes)
        return ConstraintRule(num_classes, tuple(free), background, prior, penalty, void_uncovered)

    def allowed(self, ev: BoxEvidence) -> torch.Tensor:
        """N x K x H x W bool: where each class may be (see the module docstring)."""
        in_rows, in_cols = (x.float() for x in ev.extents())  # N x B x H, N x B x W
        real = ev.labels >= 0
        onehot = F.one_hot(ev.labels.clamp_min(0), self.num_classes).float()  # N x B x K
        onehot = onehot * real[..., None]
        allowed = torch.einsum("nbk,nbh,nbw->nkhw", onehot, in_rows, in_cols) > 0
        if self.free:
            allowed[:, list(self.free)] = True
        if self.background is None:  # no box here and no background class: the net decides
            allowed |= ~self.covered(ev)[:, None]
        return allowed

    def covered(self, ev: BoxEvidence) -> torch.Tensor:
        """N x H x W bool: the pixels some box covers."""
        in_rows, in_cols = (x.float() for x in ev.extents())
        return torch.einsum("nbh,nbw->nhw", in_rows, in_cols) > 0

    def bias(self, ev: BoxEvidence) -> torch.Tensor:
        """N x K x H x W float32: 0 allowed, -penalty not, +prior on the smallest box's class;
        NaN (void) where no box covers a pixel, with `void_uncovered` (no background class and
        every class boxed: `rule_of` refuses it otherwise)."""
        bias = torch.where(self.allowed(ev), 0.0, -self.penalty)
        if self.prior:
            bias = bias + self.prior * self._smallest(ev)
        if self.void_uncovered and self.background is None and not self.free:
            bias = bias.masked_fill(~self.covered(ev)[:, None], torch.nan)
        return bias

    def _smallest(self, ev: BoxEvidence) -> torch.Tensor:
        """N x K x H x W bool one-hot of the class of the smallest box covering each pixel
        (box-fill's painting order: among equal areas the later box), all False where no box
        covers it; in memory linear in pixels (`first_covering`)."""
        order = smallest_first(ev)
        in_rows, in_cols = (x.gather(1, order[..., None].expand_as(x)) for x in ev.extents())
        first = first_covering(in_rows, in_cols)  # N x H x W, into `order`; -1: no box
        labels = ev.labels.gather(1, order)
        label = labels.gather(1, first.clamp_min(0).flatten(1)).view_as(first)
        hit = (first >= 0) & (label >= 0)
        classes = torch.arange(self.num_classes, device=label.device)
        return (label[:, None] == classes[:, None, None]) & hit[:, None]

    def apply(self, logits: torch.Tensor, ev: BoxEvidence) -> torch.Tensor:
        """N x K x H x W logits made box-consistent (NaN, void, stays NaN)."""
        return logits + self.bias(ev.to(logits.device)).to(logits.dtype)


def smallest_first(ev: BoxEvidence) -> torch.Tensor:
    """N x B: each image's boxes in box-fill's order of precedence, the smallest (in float32
    area) first, among equal areas the later box first; padding boxes last."""
    b = ev.bounds.float()
    area = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    area = torch.where(ev.labels >= 0, area, torch.inf)
    later_first = torch.sort(area.flip(1), dim=1, stable=True).indices
    return area.shape[1] - 1 - later_first


BITS = 62  # boxes a bit set holds: bits 0-61 of an int64 (the sign bit unused)


def _bit_sets(inside: torch.Tensor) -> torch.Tensor:
    """N x c x L bool (c <= BITS boxes) -> N x L int64: bit i set where box i covers."""
    bits = torch.arange(inside.shape[1], device=inside.device)
    return (inside.long() << bits[:, None]).sum(1)


def first_covering(in_rows: torch.Tensor, in_cols: torch.Tensor) -> torch.Tensor:
    """N x H x W int64: the first box (of `extents`' N x B x H, N x B x W) covering each
    pixel, -1 where none does. A pixel's boxes are a bit set, its row's AND its column's, the
    lowest bit the first box: BITS boxes at a time, in memory linear in pixels (never a box x
    pixel tensor)."""
    n, b, h = in_rows.shape
    first = torch.full((n, h, in_cols.shape[-1]), -1, dtype=torch.int64, device=in_rows.device)
    for start in range(0, b, BITS):
        rows = _bit_sets(in_rows[:, start : start + BITS])
        cols = _bit_sets(in_cols[:, start : start + BITS])
        both = rows[:, :, None] & cols[:, None, :]
        lowest = torch.frexp((both & -both).float()).exponent - 1  # powers of 2: exact
        first = torch.where((first < 0) & (both != 0), start + lowest, first)
    return first


def rule_of(meta: dict | None, option: BoxConstraint | None) -> ConstraintRule | None:
    """The rule for the ancillary model in `meta`, or None when the option is off (or the
    model is not an ancillary one)."""
    if meta is None or option is None or not option.enabled or meta.get("kind") != "ancillary":
        return None
    classes = (meta.get("boxes") or {}).get("classes")
    rule = ConstraintRule.of(
        len(meta["class_names"]),
        meta.get("background"),
        tuple(classes) if classes else None,
        option.prior,
        option.penalty,
        option.void_uncovered,
    )
    if rule.void_uncovered and (rule.background is not None or rule.free):
        free = [meta["class_names"][k] for k in rule.free]
        raise BoxsegError(
            "--box-uncovered void: only for data where every class gets boxes and none is "
            f"the background (here {', '.join(free)} may be anywhere, without a box); a pixel "
            "no box covers is then not a missing box"
        )
    return rule


def constrain_whole(
    logits: torch.Tensor, rule: ConstraintRule | None, boxes: np.ndarray, labels: np.ndarray
) -> torch.Tensor:
    """One whole image's K x H x W logits made box-consistent by `rule` (None: as they are)."""
    if rule is None:
        return logits
    ev = BoxEvidence.whole([boxes], [labels], *logits.shape[-2:], device=logits.device)
    return rule.apply(logits[None], ev)[0]
