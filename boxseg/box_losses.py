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
inside them. They run on a batch's crops at training resolution, with shifted views and
tensors over all boxes at once (no Python loop over pixels or boxes), from the crop's box
evidence (`box_constraint.BoxEvidence`): never from a mask. `WeakBoxLoss` is the user's option,
`BoxTerms` the training step's term.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

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
