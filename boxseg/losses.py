"""The training losses: the primary's objective (equation (5)) and the terms it is made of.

- F's term: `hard_cross_entropy`, cross-entropy against a class-index mask (void ignored);
  train-anc's loss too.
- W's term: `soft_cross_entropy` against the detached target q that a self-correction makes
  (selfcorr.py), over W's valid pixels, scaled by `weak_loss_scale`.
- Hard pixels (`--hard-pixels` < 1): both terms average their hardest pixels (`hardest_mean`).
- Box terms (`--weak-boxes`): the BoxInst terms on W, box_losses.py (`BoxTerms`).

`Objective` composes them into the training step, with any `Correction` and a source of W's
ancillary logits (weak_targets.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from boxseg.box_losses import BoxTerms
from boxseg.data.sample import VOID
from boxseg.weak_targets import Source, without_void

Logs = dict[str, torch.Tensor | float]


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
    logits: torch.Tensor,
    mask: torch.Tensor,
    class_weights: torch.Tensor | None = None,
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


def weak_loss_scale(weak_weight: float, f_batch: int, w_batch: int) -> float:
    """The W term's factor. The paper sums the loss over images, (sum_F + sum_W) / n_F =
    mean_F + (n_W / n_F) mean_W; the terms are per-set means, so W's mean is scaled by W images
    per F image (1 when the batches are equal), times --weak-weight. `f_batch` and `w_batch`
    are the batches a step delivers (`Batches.batch_size`), not those asked for: a set smaller
    than its batch gives all its images (per process) each step."""
    return weak_weight * w_batch / f_batch


class Correction(Protocol):
    """What the objective needs of a self-correction (selfcorr.py): the detached target q of a
    W batch, and any loss of its own on F (conv's g, its trainable `merger`; None without)."""

    merger: nn.Module | None

    def target(
        self, anc_logits: torch.Tensor, primary_logits: torch.Tensor, step: int
    ) -> tuple[torch.Tensor, Logs]: ...

    def f_loss(
        self, out_f: torch.Tensor, f: dict, class_weights: torch.Tensor | None
    ) -> tuple[torch.Tensor, Logs]: ...


@dataclass
class Objective:
    """Equation (5): CE(y, p) on F + the correction's own F loss (conv's g) + the W term
    CE(q, p), q = correction(l_anc, l) detached, weighted by `w_scale`. `weak_logits`: the
    source of W's l_anc (None: F only). Called as the engine's step: (nets, batch, step) ->
    (loss, logs, images)."""

    correction: Correction
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
        loss_f, all_void = hard_cross_entropy(
            out[:nf], f["mask"], self.class_weights, self.hard_pixels
        )
        loss_c, logs = self.correction.f_loss(out[:nf], f, self.class_weights)
        loss = loss_f + loss_c
        logs |= {"loss_f": loss_f.detach(), "skipped_f": all_void}
        if w is not None:  # (conv's stage 2 has no W batch)
            l_anc, valid = without_void(self.weak_logits(w), w["valid"])
            q, extra = self.correction.target(l_anc, out[nf:], step)
            loss_w = soft_cross_entropy(out[nf:], q, valid, self.class_weights, self.hard_pixels)
            loss = loss + self.w_scale * loss_w
            logs |= {"loss_w": loss_w.detach()} | extra
            if self.box_terms is not None:
                loss_b, logs_b = self.box_terms(out[nf:], w, step)
                loss, logs = loss + loss_b, logs | logs_b
        return loss, logs, images.shape[0]
