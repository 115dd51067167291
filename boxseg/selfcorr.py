"""Self-correction: how the soft target q for a weak image is formed, and the soft loss.

- none:   q = softmax(l_anc)
- linear: l_q = (l + a * l_anc) / (1 + a), the minimiser of KL(q||p) + a KL(q||p_anc) for
          softmax outputs (method.md), with a annealed by `alpha_at`.
- conv:   q = softmax(g(l, l_anc)), g a small CNN (`ConvMerger`) trained on F.
q is always detached: no gradient flows into the target.

The primary's objective (`Objective`, equation (5)) composes the F term, one of
`NoCorrection`, `LinearCorrection`, `ConvCorrection` (each: the target q of a W batch, and any
loss of its own on F), a source of W's ancillary logits (weak_targets.py) and, with
`--weak-boxes`, the box-supervised terms of box_losses.py on W. A new correction
is one class with `target` and `f_loss`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from boxseg.box_losses import BoxTerms
from boxseg.data.sample import VOID
from boxseg.weak_targets import OnlineAncillary, Source, constrained, without_void

SELF_CORR_MODES = ("none", "linear", "conv")
LOGP_FLOOR = -16.0  # the merger's inputs are log-probabilities clamped here


def linear_combine(
    primary_logits: torch.Tensor, anc_logits: torch.Tensor, alpha: float
) -> torch.Tensor:
    """(l + alpha * l_anc) / (1 + alpha), elementwise; any shape, class dimension 1."""
    return (primary_logits + alpha * anc_logits) / (1.0 + alpha)


def alpha_at(
    step: int, total_steps: int, start: float = 30.0, end: float = 0.5, decay_fraction: float = 0.5
) -> float:
    """Our default schedule: geometric decay from `start` to `end` over the first
    `decay_fraction` of training, then constant at `end`."""
    decay_steps = max(1, round(total_steps * decay_fraction))
    t = min(step, decay_steps) / decay_steps
    return float(start * (end / start) ** t)


def soft_target(
    anc_logits: torch.Tensor,
    primary_logits: torch.Tensor | None = None,
    mode: str = "none",
    alpha: float = 1.0,
    merger: nn.Module | None = None,
) -> torch.Tensor:
    """The detached target distribution q (N x K x H x W) for one self-correction mode."""
    with torch.no_grad():
        if mode == "none":
            logits = anc_logits
        elif mode in ("linear", "conv"):
            if primary_logits is None:
                raise ValueError(f"{mode} self-correction needs the primary logits")
            l, la = primary_logits.detach().float(), anc_logits.float()
            logits = linear_combine(l, la, alpha) if mode == "linear" else merger(l, la)
        else:
            raise ValueError(f"unknown self-correction mode {mode!r}")
        return torch.softmax(logits.float(), dim=1)


def hardest_mean(per_pixel: torch.Tensor, weight: torch.Tensor, fraction: float) -> torch.Tensor:
    """The mean of the largest `fraction` of the weighted per-pixel losses (N x H x W), over
    the batch's pixels of nonzero weight (at least one): bootstrapped cross-entropy, the
    OHEM-style loss of DeepLab's `top_k_percent_pixels`. Pixels the net already gets right
    stop diluting the gradient of thin and rare structures. No host sync: the count of kept
    pixels stays a tensor."""
    losses = (per_pixel * weight).flatten().sort(descending=True).values
    keep = (fraction * (weight > 0).sum()).ceil().clamp_min(1)
    ranks = torch.arange(losses.numel(), device=losses.device)
    return (losses * (ranks < keep).to(losses.dtype)).sum() / keep.to(losses.dtype)


def soft_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor | None = None,
    class_weights: torch.Tensor | None = None,
    hard_pixels: float = 1.0,
) -> torch.Tensor:
    """Mean over valid pixels of -sum_k target_k log softmax(logits)_k.

    logits, target: N x K x H x W (target a distribution over dim 1); valid: N x H x W bool.
    With `class_weights` (K), each class's term is weighted and the mean is over the pixels'
    weights sum_k w_k target_k, so a one-hot target gives torch's weighted cross-entropy.
    `hard_pixels` < 1: the mean over that fraction of the valid pixels with the largest
    (weighted) loss instead (`hardest_mean`).
    """
    logp = torch.log_softmax(logits.float(), dim=1)
    w = None
    if class_weights is not None:
        w = class_weights.to(logp.device, logp.dtype).view(1, -1, 1, 1)
    per_pixel = -((target * logp) if w is None else (w * target * logp)).sum(dim=1)
    if hard_pixels < 1.0:
        weight = torch.ones_like(per_pixel) if valid is None else valid.to(per_pixel.dtype)
        return hardest_mean(per_pixel, weight, hard_pixels)
    if w is not None:
        pixel_weight = (w * target).sum(dim=1)
        if valid is not None:
            pixel_weight = pixel_weight * valid.to(pixel_weight.dtype)
            per_pixel = per_pixel * valid.to(per_pixel.dtype)
        return per_pixel.sum() / pixel_weight.sum().clamp_min(1e-6)
    if valid is None:
        return per_pixel.mean()
    valid = valid.to(per_pixel.dtype)
    return (per_pixel * valid).sum() / valid.sum().clamp_min(1.0)


def hard_cross_entropy(
    logits: torch.Tensor, mask: torch.Tensor, class_weights: torch.Tensor | None = None,
    hard_pixels: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of logits (N x K x H x W) against a class-index mask (VOID ignored), as
    torch's (weighted) mean, or with `hard_pixels` < 1 the mean over that fraction of the
    valid pixels with the largest loss (`hardest_mean`); and a 0-d tensor that is 1 when every
    pixel was void. Such a batch gives a zero loss (still attached to the graph) instead of
    torch's NaN, without a host sync."""
    valid = mask != VOID
    target = torch.where(valid, mask, torch.zeros_like(mask))
    per_pixel = F.cross_entropy(logits.float(), target, reduction="none")
    weight = valid.float()
    if class_weights is not None:
        weight = weight * class_weights.to(logits.device, torch.float32)[target]
    if hard_pixels < 1.0:
        return hardest_mean(per_pixel, weight, hard_pixels), (~valid.any()).float()
    loss = (per_pixel * weight).sum() / weight.sum().clamp_min(1e-6)
    return loss, (~valid.any()).float()


class ConvMerger(nn.Module):
    """Convolutional self-correction g: [l, l_anc] (2K channels) -> conv3x3 -> hidden -> ReLU
    -> conv3x3 -> K logits. No activation or normalisation on the output: logits may be negative.

    Both inputs enter as log-probabilities (log_softmax over classes): the same information as
    the logits (softmax ignores a per-pixel shift), but g then gives the same answer for logits
    stored as float16, as int8 codes of log-probabilities, or computed online. They are
    clamped at LOGP_FLOOR (the int8 store's range), so a class the box constraint rules out
    (a log-probability near -1e4) enters as "impossible" without swamping the convolution.
    """

    def __init__(self, num_classes: int, hidden: int = 128):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(2 * num_classes, hidden, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, num_classes, 3, padding=1),
        )

    def forward(self, primary_logits: torch.Tensor, anc_logits: torch.Tensor) -> torch.Tensor:
        x = torch.cat([torch.log_softmax(primary_logits, 1), torch.log_softmax(anc_logits, 1)], 1)
        return self.net(x.clamp_min(LOGP_FLOOR))


Logs = dict[str, torch.Tensor | float]


class NoCorrection:
    """q = softmax(l_anc): the ancillary logits as they are."""

    merger: nn.Module | None = None

    def target(self, anc_logits: torch.Tensor, primary_logits: torch.Tensor, step: int):
        return soft_target(anc_logits), {}

    def f_loss(self, out_f: torch.Tensor, f: dict, class_weights) -> tuple[torch.Tensor, Logs]:
        return out_f.new_zeros(()), {}


class LinearCorrection(NoCorrection):
    """q = softmax((l + a l_anc) / (1 + a)), a annealed by `alpha_at` over `iters` steps."""

    def __init__(self, iters: int, start: float, end: float, decay_fraction: float):
        self.iters, self.start, self.end, self.decay = iters, start, end, decay_fraction

    def alpha(self, step: int) -> float:
        return alpha_at(step, self.iters, self.start, self.end, self.decay)

    def target(self, anc_logits: torch.Tensor, primary_logits: torch.Tensor, step: int):
        a = self.alpha(step)
        return soft_target(anc_logits, primary_logits, "linear", a), {"alpha": a}


class ConvCorrection(NoCorrection):
    """q = softmax(g(l, l_anc)); g (`merger`) learns on F, CE(y, g(l, l_anc)), from the F
    batch's ancillary logits (`f_anc_logits`: made like W's, weak_targets.py); the primary's
    logits enter g detached unless `grad_to_primary`."""

    def __init__(
        self,
        merger: ConvMerger,
        f_anc_logits: Callable[[dict], torch.Tensor],
        grad_to_primary: bool = False,
    ):
        self.merger, self.f_anc_logits, self.grad_to_primary = merger, f_anc_logits, grad_to_primary

    def target(self, anc_logits: torch.Tensor, primary_logits: torch.Tensor, step: int):
        q = soft_target(anc_logits, primary_logits, "conv", merger=self.merger)
        return q, {"stage": 3}

    def f_loss(self, out_f: torch.Tensor, f: dict, class_weights) -> tuple[torch.Tensor, Logs]:
        g_in = out_f if self.grad_to_primary else out_f.detach()
        merged = self.merger(g_in.float(), self.f_anc_logits(f))
        loss, _ = hard_cross_entropy(merged, f["mask"], class_weights)
        return loss, {"loss_g": loss.detach(), "stage": 2}  # (3 once W joins: `target`)


def make_correction(mode: str, num_classes: int, iters: int, alpha_start: float,
                    alpha_end: float, alpha_decay_fraction: float, conv_hidden: int,
                    conv_grad_to_primary: bool, f_anc: Source | None) -> NoCorrection:  # fmt: skip
    """The self-correction piece for `mode`."""
    if mode == "linear":
        return LinearCorrection(iters, alpha_start, alpha_end, alpha_decay_fraction)
    if mode == "conv":
        merger = ConvMerger(num_classes, conv_hidden)
        return ConvCorrection(merger, f_anc, conv_grad_to_primary)
    return NoCorrection()


def f_anc_logits(anc: nn.Module | None, like_store: tuple[int, str] | None,
                 rule) -> Source | None:  # fmt: skip
    """Conv's source of F's ancillary logits: the net online, made like the store's when W's
    come from a store file (pooled, rounded, decoded: `like_store` = (stride, dtype)), then
    box-consistent by `rule` at pixel level as W's are, so g learns on the input it
    corrects."""
    if anc is None:
        return None
    return constrained(OnlineAncillary(anc, like_store), rule)


def weak_loss_scale(weak_weight: float, f_batch: int, w_batch: int) -> float:
    """The W term's factor. The paper sums the loss over images, (sum_F + sum_W) / n_F =
    mean_F + (n_W / n_F) mean_W; the terms are per-set means, so W's mean is scaled by W images
    per F image (1 when the batches are equal), times --weak-weight. `f_batch` and `w_batch`
    are the batches a step delivers (`Batches.batch_size`), not those asked for: a set smaller
    than its batch gives all its images (per process) each step."""
    return weak_weight * w_batch / f_batch


@dataclass
class Objective:
    """Equation (5): CE(y, p) on F + the correction's own F loss (conv's g) + the W term
    CE(q, p), q = correction(l_anc, l) detached, weighted by `w_scale`. `weak_logits`: the
    source of W's l_anc (None: F only). Called as the engine's step: (nets, batch, step) ->
    (loss, logs, images)."""

    correction: NoCorrection
    weak_logits: Source | None
    class_weights: torch.Tensor | None
    w_scale: float
    box_terms: BoxTerms | None = None  # --weak-boxes: W's boxes shape p directly too
    hard_pixels: float = 1.0  # < 1: both terms average their hardest pixels (`hardest_mean`)

    def __call__(self, nets: nn.ModuleDict, batch: dict, step: int):
        f, w = batch["f"], batch.get("w")
        nf = f["image"].shape[0]
        images = f["image"] if w is None else torch.cat([f["image"], w["image"]])
        out = nets["primary"](images)
        loss_f, all_void = hard_cross_entropy(out[:nf], f["mask"], self.class_weights,
                                              self.hard_pixels)  # fmt: skip
        loss_c, logs = self.correction.f_loss(out[:nf], f, self.class_weights)
        loss = loss_f + loss_c
        logs |= {"loss_f": loss_f.detach(), "skipped_f": all_void}
        if w is not None:  # (conv's stage 2 has no W batch)
            l_anc, valid = without_void(self.weak_logits(w), w["valid"])
            q, extra = self.correction.target(l_anc, out[nf:], step)
            loss_w = soft_cross_entropy(out[nf:], q, valid, self.class_weights,
                                        self.hard_pixels)  # fmt: skip
            loss = loss + self.w_scale * loss_w
            logs |= {"loss_w": loss_w.detach()} | extra
            if self.box_terms is not None:
                loss_b, logs_b = self.box_terms(out[nf:], w, step)
                loss, logs = loss + loss_b, logs | logs_b
        return loss, logs, images.shape[0]
