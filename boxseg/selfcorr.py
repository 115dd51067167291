"""Self-correction: how the soft target q for a weak image is formed.

- none:   q = softmax(l_anc)
- linear: l_q = (l + a * l_anc) / (1 + a), the minimiser of KL(q||p) + a KL(q||p_anc) for
          softmax outputs (method.md), with a annealed by `alpha_at`.
- conv:   q = softmax(g(l, l_anc)), g a small CNN (`ConvMerger`) trained on F.
q is always detached: no gradient flows into the target.

The corrections are `NoCorrection`, `LinearCorrection` and `ConvCorrection`: each gives the
target q of a W batch and any loss of its own on F; the objective that uses them
(`losses.Objective`, equation (5)) takes any of them (`losses.Correction`). A new correction
is one class with `target` and `f_loss`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from boxseg.losses import Logs, hard_cross_entropy
from boxseg.weak_targets import OnlineAncillary, Source, constrained

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


def make_correction(
    mode: str,
    num_classes: int,
    iters: int,
    alpha_start: float,
    alpha_end: float,
    alpha_decay_fraction: float,
    conv_hidden: int,
    conv_grad_to_primary: bool,
    f_anc: Source | None,
) -> NoCorrection:
    """The self-correction piece for `mode`."""
    if mode == "linear":
        return LinearCorrection(iters, alpha_start, alpha_end, alpha_decay_fraction)
    if mode == "conv":
        merger = ConvMerger(num_classes, conv_hidden)
        return ConvCorrection(merger, f_anc, conv_grad_to_primary)
    return NoCorrection()


def f_anc_logits(anc: nn.Module | None, like_store: tuple[int, str] | None, rule) -> Source | None:
    """Conv's source of F's ancillary logits: the net online, made like the store's when W's
    come from a store file (pooled, rounded, decoded: `like_store` = (stride, dtype)), then
    box-consistent by `rule` at pixel level as W's are, so g learns on the input it
    corrects."""
    if anc is None:
        return None
    return constrained(OnlineAncillary(anc, like_store), rule)
