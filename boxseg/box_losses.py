"""Box-supervised losses: shapes learned from W's boxes alone (BoxInst, Tian et al. CVPR 2021).

Two facts hold for every box, whatever is inside it:
- tightness: its object touches every row and every column the box spans. For a box of class
  k, the max of p_k along each column (over the box's rows) and along each row (over its
  columns) must be 1: `projection_loss` (dice, as BoxInst). An axis counts only when the crop
  shows the box's whole extent across it (a box cut by the crop says nothing about the rows
  it lost).
- colour: neighbouring pixels of similar colour mostly share a label: `pairwise_loss` =
  -log sum_k p_ik p_jk over the pairs of a dilated 3x3 neighbourhood whose LAB colour
  similarity exp(-|lab_i - lab_j| / 2) is at least `threshold` (BoxInst: 0.3), over the pixels
  inside boxes (and everywhere on a dataset with a background class), leaving out the pairs
  to which the boxes allow no common class (two abutting boxes of different classes).

The box constraint keeps a class out of the pixels outside its boxes; these terms shape it
inside them. They run on a batch's crops at training resolution, from the crop's box
evidence (`box_constraint.BoxEvidence`), never from a mask, over all boxes at once (no Python
loop over pixels or boxes) and in memory linear in pixels: the colour term on shifted views,
the projections from the per-class maps by a max tree along each axis (`run_max`), never a
boxes x pixels tensor. `WeakBoxLoss` is the user's option, `BoxTerms` the training step's term.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from boxseg.box_constraint import BoxEvidence, ConstraintRule
from boxseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from boxseg.errors import BoxsegError

THETA = 2.0  # colour similarity exp(-distance / THETA), distance in LAB units (BoxInst)
HALF_NEIGHBOURS = ((0, 1), (1, -1), (1, 0), (1, 1))  # each of the 8 neighbour pairs once


@dataclass(frozen=True)
class WeakBoxLoss:
    """The option: whether W's boxes also supervise the net (`--weak-boxes`), the weight of the
    terms (ramped up linearly over the first `warmup` fraction of training), the pairwise
    term's share, its colour threshold and neighbourhood dilation."""

    enabled: bool = False
    weight: float = 1.0
    pairwise: float = 1.0
    warmup: float = 0.2
    threshold: float = 0.3
    dilation: int = 2

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        if not self.weight >= 0 or not self.pairwise >= 0:
            raise BoxsegError(f"--weak-box-weight {self.weight}: must be >= 0")
        if not 0 <= self.warmup <= 1:
            raise BoxsegError(f"weak-box warm-up {self.warmup}: must be in [0, 1]")
        if not 0 < self.threshold <= 1 or self.dilation < 1:
            raise BoxsegError(
                f"weak-box colour threshold {self.threshold} / dilation "
                f"{self.dilation}: need 0 < threshold <= 1, dilation >= 1"
            )


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """N x 3 x H x W sRGB in [0, 1] -> CIE LAB (D65; L in [0, 100]), as OpenCV's float
    cvtColor(COLOR_RGB2Lab) gives it, on the tensor's device."""
    lin = torch.where(rgb > 0.04045, ((rgb.clamp_min(0) + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    m = rgb.new_tensor(
        [
            [0.412453, 0.357580, 0.180423],
            [0.212671, 0.715160, 0.072169],
            [0.019334, 0.119193, 0.950227],
        ]
    )
    xyz = torch.einsum("ij,njhw->nihw", m, lin)
    xyz = xyz / rgb.new_tensor([0.950456, 1.0, 1.088754]).view(1, 3, 1, 1)
    f = torch.where(xyz > 0.008856, xyz.clamp_min(1e-12) ** (1 / 3), 7.787 * xyz + 16 / 116)
    lum = torch.where(xyz[:, 1] > 0.008856, 116 * f[:, 1] - 16, 903.3 * xyz[:, 1])
    return torch.stack([lum, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], 1)


def image_lab(images: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """A batch of normalised network inputs back to LAB colour."""
    rgb = images.float() * images.new_tensor(std).view(1, 3, 1, 1) + images.new_tensor(mean).view(
        1, 3, 1, 1
    )
    return rgb_to_lab(rgb.clamp(0, 1))


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


# Each box's max along an axis, from the per-class maps, in memory linear in pixels: the
# maps' positions along the axis are paired up level by level (a max tree: positions 2i and
# 2i+1 of one level make position i of the next), and a box's run of positions is tiled by at
# most two aligned blocks a level. Nothing of size boxes x pixels is ever made; the gradient
# is amax's (shared evenly by the positions tied for the max), pushed down the tree.


def _halves(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A tree level (... x L x S, along L) as views: its even and its odd positions (the
    pairs), and the unpaired last position of an odd L."""
    h = v.shape[-2] // 2
    return v[..., 0 : 2 * h : 2, :], v[..., 1 : 2 * h : 2, :], v[..., 2 * h :, :]


def _max_tree(maps: torch.Tensor, levels: int) -> tuple[list, list]:
    """The tree's levels (level 0: the maps) and, for each level above 0, which halves of each
    block hold its max: (even, odd) bool."""
    tree, holders = [maps], []
    for _ in range(levels - 1):
        even, odd, tail = _halves(tree[-1])
        top = torch.maximum(even, odd)
        tree.append(torch.cat([top, tail], -2))
        holders.append((even == top, odd == top))
    return tree, holders


def _count_up(v: torch.Tensor, count: torch.Tensor | None, holders: tuple) -> torch.Tensor:
    """How many positions of each block of the level above `v` hold the block's max, from
    `count`, the same of `v` (None: level 0, one position a block)."""
    if count is None:  # a view: no pixel-sized tensor of ones
        count = torch.ones((), dtype=torch.int32, device=v.device).expand(v.shape)
    even, odd, tail = _halves(count)
    return torch.cat([even * holders[0] + odd * holders[1], tail], -2)


def _push_down(grad_up: torch.Tensor, v: torch.Tensor, holders: tuple) -> torch.Tensor:
    """The gradient of level `v` from the one above it (each block's share for its positions
    that hold its max): to the halves of each block that hold it."""
    grad = torch.empty_like(v, dtype=grad_up.dtype)
    even, odd, tail = _halves(grad)
    pairs = grad_up[..., : even.shape[-2], :]
    torch.mul(pairs, holders[0], out=even)
    torch.mul(pairs, holders[1], out=odd)
    tail.copy_(grad_up[..., even.shape[-2] :, :])
    return grad


def _blocks(lo: torch.Tensor, hi: torch.Tensor, levels: int) -> list:
    """Per tree level, bottom up, the aligned blocks that tile each run [lo, hi) (N x B): two
    pairs (the block's index at that level, N x B; whether the run takes it, N x B bool)."""
    out, left, right = [], lo, hi
    for _ in range(levels):
        active = left < right
        take_left, take_right = active & (left % 2 == 1), active & (right % 2 == 1)
        out.append(((left, take_left), (right - 1, take_right)))
        left, right = (left + take_left.long()) // 2, (right - take_right.long()) // 2
    return out


def _levels(length: int) -> int:
    """The levels of a max tree over `length` positions, up to the one block of them all."""
    return (max(length, 1) - 1).bit_length() + 1


def _at(level: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """N x B x S: each box's class map (`labels` N x B) at its block `index` (N x B) of a tree
    level (N x K x L x S)."""
    n = torch.arange(level.shape[0], device=level.device)[:, None]
    return level[n, labels, index.clamp(0, level.shape[-2] - 1)]


def _inner_max(maps: torch.Tensor, labels: torch.Tensor, blocks: list) -> torch.Tensor:
    """N x B x S: the max over each box's run (-inf for an empty one), one level at a time."""
    inner = maps.new_full((*labels.shape, maps.shape[-1]), -torch.inf)
    level = maps
    for j, pair in enumerate(blocks):
        if j:
            even, odd, tail = _halves(level)
            level = torch.cat([torch.maximum(even, odd), tail], -2)
        for index, take in pair:
            at = _at(level, labels, index)
            inner = torch.where(take[..., None], torch.maximum(inner, at), inner)
    return inner


def _holds(level, labels, block, inner) -> torch.Tensor:
    """N x B x S bool: the runs that take this block, where it holds their max."""
    index, take = block
    return take[..., None] & (_at(level, labels, index) == inner)


def _tie_counts(tree: list, holders: list, labels, blocks: list, inner) -> torch.Tensor:
    """N x B x S: how many positions of each box's run hold its max (`inner`)."""
    ties, count = torch.zeros_like(inner, dtype=torch.int64), None
    for j, pair in enumerate(blocks):
        count = _count_up(tree[j - 1], count, holders[j - 1]) if j else None
        for block in pair:
            held = _holds(tree[j], labels, block, inner)
            ties += held if count is None else held * _at(count, labels, block[0])
    return ties


def _spread(tree: list, holders: list, labels, blocks: list, inner, share) -> torch.Tensor:
    """The maps' gradient: each box's `share` (N x B x S) to every position of its run that
    holds its max, added at the blocks that tile the run and pushed down the tree (which
    empties as it goes)."""
    n = torch.arange(labels.shape[0], device=labels.device)[:, None]
    grad = None
    for j in reversed(range(len(blocks))):
        level = tree.pop()
        if grad is None:
            grad = torch.zeros_like(level, dtype=share.dtype)
        else:
            grad = _push_down(grad, level, holders.pop())
        for index, take in blocks[j]:
            held = _holds(level, labels, (index, take), inner)
            where = (n, labels, index.clamp(0, level.shape[-2] - 1))
            grad.index_put_(where, share * held, accumulate=True)
    return grad


class _RunMax(torch.autograd.Function):
    """Per box, the max of its class's map (N x K x L x S) over its run [lo, hi) along L, for
    each of the S positions across: `(maps[labels] * in_run).amax(2)`, runs shorter than L
    taking the max with the zeros outside them; value and gradient (amax's: shared evenly by
    the positions tied for the max, the zeros outside included) without a box x pixel tensor."""

    @staticmethod
    def forward(ctx, maps, labels, lo, hi):
        inner = _inner_max(maps, labels, _blocks(lo, hi, _levels(maps.shape[-2])))
        outside = (hi - lo < maps.shape[-2])[..., None]  # the run leaves zeros out
        out = torch.where(outside, inner.clamp_min(0), inner)
        ctx.save_for_backward(maps, labels, lo, hi, inner, out)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        maps, labels, lo, hi, inner, out = ctx.saved_tensors
        blocks = _blocks(lo, hi, _levels(maps.shape[-2]))
        tree, holders = _max_tree(maps, len(blocks))
        in_run = inner == out  # the max lies in the run (else it is a zero outside it)
        ties = torch.where(in_run, _tie_counts(tree, holders, labels, blocks, inner), 0)
        ties = ties + torch.where(out == 0, maps.shape[-2] - (hi - lo)[..., None], 0)
        share = torch.where(in_run, grad / ties.clamp_min(1), 0)
        return _spread(tree, holders, labels, blocks, inner, share), None, None, None


def run_max(maps: torch.Tensor, labels: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """N x B x S: `(maps[labels] * inside).amax(2)`, value and gradient, in memory linear in
    pixels: per box, the max of its class's map (`maps` N x K x L x S, `labels` N x B) over
    the positions along L it covers (`inside` N x B x L; one run of them, as `BoxEvidence`'s
    monotone rows and columns make it), with the zeros of those it leaves out."""
    lo = inside.byte().argmax(-1)
    hi = lo + inside.sum(-1)
    return _RunMax.apply(maps, labels, lo, hi)


Extents = tuple[torch.Tensor, torch.Tensor]  # BoxEvidence.extents: (in_rows, in_cols)


def projection_loss(
    probs: torch.Tensor, ev: BoxEvidence, extents: Extents | None = None
) -> torch.Tensor:
    """Tightness: mean over boxes and axes of the dice loss between the max-projection of the
    box class's probability (N x K x H x W) inside the box and the box's extent (all ones).
    `extents`: `ev.extents()` if the caller has them already (the box constraint's pixels)."""
    in_rows, in_cols = ev.extents() if extents is None else extents
    labels = ev.labels.clamp_min(0)
    col_max = run_max(probs, labels, in_rows)  # per column, over the box's rows
    row_max = run_max(probs.transpose(2, 3), labels, in_cols)  # per row, over its columns
    real = ev.labels >= 0
    use_x = real & in_cols.any(-1) & shows_whole(ev.rows, ev.bounds[..., 1], ev.bounds[..., 3])
    use_y = real & in_rows.any(-1) & shows_whole(ev.cols, ev.bounds[..., 0], ev.bounds[..., 2])
    loss = (_dice_to_ones(col_max, in_cols) * use_x).sum()
    loss = loss + (_dice_to_ones(row_max, in_rows) * use_y).sum()
    return loss / (use_x.sum() + use_y.sum()).clamp_min(1)


def _pair(x: torch.Tensor, dy: int, dx: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Views of x (... x H x W) at each pixel and at its neighbour (+dy, +dx), same shape."""
    h, w = x.shape[-2:]
    y0, y1, x0, x1 = max(0, -dy), h - max(0, dy), max(0, -dx), w - max(0, dx)
    return x[..., y0:y1, x0:x1], x[..., y0 + dy : y1 + dy, x0 + dx : x1 + dx]


def pairwise_loss(
    log_probs: torch.Tensor,
    lab: torch.Tensor,
    region: torch.Tensor,
    threshold: float = 0.3,
    dilation: int = 2,
    allowed: torch.Tensor | None = None,
) -> torch.Tensor:
    """Colour: mean of -log P(same label) = -log sum_k p_ik p_jk over the neighbour pairs (i, j)
    (dilated 3x3) that both lie in `region` (N x H x W bool) and whose LAB colours (N x 3 x H x
    W) are similar: exp(-|lab_i - lab_j| / THETA) >= threshold. With `allowed` (N x K x H x W
    bool, the box constraint's classes of each pixel) only pairs that some class may share
    count: across the edge of two abutting boxes of different classes the boxes have already
    decided, and such a pair's -log P(same) is the constraint's penalty (about 1e4), not
    something the net can lower."""
    total = log_probs.new_zeros(())
    count = log_probs.new_zeros(())
    for dy, dx in HALF_NEIGHBOURS:
        dy, dx = dy * dilation, dx * dilation
        la, lb = _pair(lab, dy, dx)
        similar = torch.exp(-(la - lb).norm(dim=1) / THETA) >= threshold
        ra, rb = _pair(region, dy, dx)
        use = similar & ra & rb
        if allowed is not None:
            aa, ab = _pair(allowed, dy, dx)
            use = use & (aa & ab).any(1)
        pa, pb = _pair(log_probs, dy, dx)
        log_same = torch.logsumexp(pa + pb, 1)
        total = total - (log_same * use).sum()
        count = count + use.sum()
    return total / count.clamp_min(1)


@dataclass
class BoxTerms:
    """The weak-box term of a training step: `weight(step) * (projection + pairwise * colour)`
    on a W batch's logits (N x K x H x W, already box-consistent where the caller wants that),
    from the batch's image, "valid" padding mask and box evidence; with the box constraint's
    `rule`, the colour term skips pairs the boxes give no class in common."""

    spec: WeakBoxLoss
    iters: int
    background: int | None
    rule: ConstraintRule | None = None

    def weight(self, step: int) -> float:
        ramp = max(1, round(self.iters * self.spec.warmup))
        return self.spec.weight * min(1.0, (step + 1) / ramp)

    def __call__(self, logits: torch.Tensor, batch: dict, step: int) -> tuple[torch.Tensor, dict]:
        ev = BoxEvidence.of_batch(batch).to(logits.device)
        log_probs = F.log_softmax(logits.float(), 1)
        in_rows, in_cols = ev.extents()
        proj = projection_loss(log_probs.exp(), ev, (in_rows, in_cols))
        valid = batch["valid"].to(logits.device).bool()
        if self.background is None:  # only inside boxes; elsewhere nothing says what is there
            valid = valid & (torch.einsum("nbh,nbw->nhw", in_rows.float(), in_cols.float()) > 0)
        allowed = None if self.rule is None else self.rule.allowed(ev)
        colour = pairwise_loss(
            log_probs,
            image_lab(batch["image"]),
            valid,
            self.spec.threshold,
            self.spec.dilation,
            allowed,
        )
        loss = self.weight(step) * (proj + self.spec.pairwise * colour)
        return loss, {"loss_proj": proj.detach(), "loss_pair": colour.detach()}
