"""Where a batch's ancillary logits come from, for train-primary: the stored logits the batch
carries (a store, or in-memory logits), or the ancillary net run on its crops (online).

Both are plain callables `batch -> N x K x H x W float32 logits`, computed without gradient.
"""

from __future__ import annotations

import torch
from torch import nn

from boxseg.store import as_stored


def stored_logits(batch: dict) -> torch.Tensor:
    """The logits the W set read from the store for this crop (already resampled to it)."""
    return batch["logits"]


class OnlineAncillary:
    """The frozen ancillary net on the batch's crops and box rasters, plus the box-constraint
    bias the batch carries (if any). With `like_store` = (stride, dtype), each image's logits
    are then pooled, rounded and resampled as a store of that stride and dtype would give them
    back (`store.as_stored`): the conv merger's F inputs in store mode."""

    def __init__(self, anc: nn.Module, like_store: tuple[int, str] | None = None):
        self.anc, self.like_store = anc, like_store

    @torch.no_grad()
    def __call__(self, batch: dict) -> torch.Tensor:
        out = self.anc(batch["image"], batch["boxes"]).float()
        bias = batch.get("bias")
        if self.like_store is None:
            return out if bias is None else out + bias
        stride, dtype = self.like_store
        return as_stored(out, stride, dtype, bias)  # the whole batch at once
