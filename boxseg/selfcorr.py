"""Self-correction: how the soft target q for a weak image is formed, and the soft loss.

- none:   q = softmax(l_anc)
- linear: l_q = (l + a * l_anc) / (1 + a), the minimiser of KL(q||p) + a KL(q||p_anc) for
          softmax outputs (method.md), with a annealed by `alpha_at`.
- conv:   q = softmax(g(l, l_anc)), g a small CNN (`ConvMerger`) trained on F.
q is always detached: no gradient flows into the target.
"""

from __future__ import annotations

import torch
from torch import nn

SELF_CORR_MODES = ("none", "linear", "conv")


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


def soft_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean over valid pixels of -sum_k target_k log softmax(logits)_k.

    logits, target: N x K x H x W (target a distribution over dim 1); valid: N x H x W bool.
    """
    per_pixel = -(target * torch.log_softmax(logits.float(), dim=1)).sum(dim=1)
    if valid is None:
        return per_pixel.mean()
    valid = valid.to(per_pixel.dtype)
    return (per_pixel * valid).sum() / valid.sum().clamp_min(1.0)


class ConvMerger(nn.Module):
    """Convolutional self-correction g: [l, l_anc] (2K channels) -> conv3x3 -> hidden -> ReLU
    -> conv3x3 -> K logits. No activation or normalisation on the output: logits may be negative.

    Both inputs enter as log-probabilities (log_softmax over classes): the same information as
    the logits (softmax ignores a per-pixel shift), but g then gives the same answer for logits
    stored as float16, as int8 codes of log-probabilities, or computed online.
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
        return self.net(x)
