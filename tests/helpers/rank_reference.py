"""`boxseg rank`'s per-image signals as they were before issue 41 (copied verbatim from
boxseg/rank.py at 5d539a4): whole-image B x H x W tensors per box. The package computes the
per-box statistics from summed-area tables instead; this is the reference its tests compare
against (tests/test_rank.py), never run by the package."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from boxseg.box_constraint import BoxEvidence, ConstraintRule
from boxseg.metrics import class_map
from boxseg.rank import CLASS_SHARE, LAYOUT_GRID, ImageSignals
from boxseg.store import LogitsStore


def _extents(ev: BoxEvidence) -> tuple[torch.Tensor, torch.Tensor]:
    """`BoxEvidence.extents` at 5d539a4 (copied verbatim, so the reference does not move with
    box_constraint.py): (N x B x H, N x B x W) bool, the rows and columns each box covers."""
    real = (ev.labels >= 0)[..., None]
    b = ev.bounds[..., None]
    rows, cols = ev.rows[:, None, :], ev.cols[:, None, :]
    in_rows = (rows >= b[:, :, 1]) & (rows < b[:, :, 3]) & (rows >= 0) & real
    in_cols = (cols >= b[:, :, 0]) & (cols < b[:, :, 2]) & (cols >= 0) & real
    return in_rows, in_cols


def box_masks(ev: BoxEvidence) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B x H, B x W) float and B labels: the rows and the columns each box of a whole image
    covers (its pixels are their outer product) and its class, for the boxes that count
    (`pixel_boxes`): the pixels and the boxes the box constraint uses."""
    real = ev.labels[0] >= 0
    in_rows, in_cols = _extents(ev)
    return in_rows[0][real].float(), in_cols[0][real].float(), ev.labels[0][real]


def image_signals(
    store: LogitsStore,
    i: int,
    class_weights: torch.Tensor,
    primary_logits: torch.Tensor | None = None,
) -> ImageSignals:
    """The signals of store image i (see the module docstring); `primary_logits`: the primary
    net's K x H x W logits for it (None: no `disagree`). Whole-image tensor operations: no
    loop over pixels or boxes."""
    raw = store.read_full(i, constrained=False)
    k, h, w = raw.shape
    boxes, stored_labels = store.read_boxes(i)
    ev = BoxEvidence.whole([boxes], [stored_labels], h, w)
    bias = store.rule.bias(ev)[0] if store.rule is not None else None
    valid = ~torch.isnan(raw).any(0)
    if bias is not None:  # the rule's void pixels (`void_uncovered`) are no target either
        valid &= ~torch.isnan(bias).any(0)
        bias = bias.nan_to_num(0.0)
    validf = valid.float()
    n_valid = max(float(validf.sum()), 1.0)
    raw = raw.nan_to_num(0.0)
    in_rows, in_cols, labels = box_masks(ev)  # the boxes that count (`pixel_boxes`)
    box_class = F.one_hot(labels, k).float()  # B x K
    covered = torch.einsum("bk,bh,bw->khw", box_class, in_rows, in_cols) > 0  # by class
    logits = raw if bias is None else raw + bias
    probs = torch.softmax(logits, 0) * validf
    pred = class_map(probs)
    entropy = -(probs * torch.log(probs.clamp_min(1e-12))).sum(0) / math.log(k)
    values: dict[str, float | None] = {
        "entropy": float((entropy * validf).sum() / n_valid),
        "outside": None,
        "empty": None,
        "disagree": None,
    }
    if bias is not None:  # mass on the classes the rule forbids
        forbidden = (~store.rule.allowed(ev)[0]).float()
        values["outside"] = float((torch.softmax(raw, 0) * forbidden).sum(0)[valid].sum() / n_valid)
    if primary_logits is not None:
        other = primary_logits.max(0).indices
        values["disagree"] = float(((other != pred) & valid).sum() / n_valid)
    # each box's fill: the share of its valid pixels whose pseudo-label is the box's class
    own = (pred[None] == labels[:, None, None]).float() * validf  # B x H x W
    hits = torch.einsum("bh,bw,bhw->b", in_rows, in_cols, own)
    area = torch.einsum("bh,bw,hw->b", in_rows, in_cols, validf)
    fills = [
        (int(c), float(hit / a)) for c, hit, a in zip(labels, hits, area, strict=True) if a > 0
    ]
    share = holds(pred, valid, covered, store.rule)
    values["rare"] = float((share * class_weights).sum() / share.sum().clamp_min(1e-12))
    layout = F.adaptive_avg_pool2d(probs[None], LAYOUT_GRID)[0].flatten()
    order = torch.argsort(share, descending=True, stable=True)
    names = [store.class_names[c] for c in order.tolist() if share[c] >= CLASS_SHARE]
    return ImageSignals(values, fills, layout, names, len(labels))


def holds(
    pred: torch.Tensor, valid: torch.Tensor, covered: torch.Tensor, rule: ConstraintRule | None
) -> torch.Tensor:
    """The share of the image each class holds, by the evidence a user trusts: for a class
    that gets boxes, the area of its boxes' union (`covered`: K x H x W); for the others (the
    background, classes without boxes: `rule.free`, or all classes of a store without rule),
    the pseudo-label's pixels outside every box. (The pseudo-label alone would hide the
    objects an ancillary net missed: those images would look poorer in rare classes than
    they are.)"""
    k, h, w = covered.shape
    outside = valid & ~covered.any(0)
    from_label = torch.bincount(pred[outside], minlength=k).float()
    from_boxes = (covered & valid).flatten(1).sum(1).float()
    free = torch.zeros(k, dtype=torch.bool)
    if rule is None:
        free[:] = True
    else:
        free[list(rule.free)] = True
        if rule.background is not None:
            free[rule.background] = True
    return torch.where(free, from_label, from_boxes) / float(h * w)
