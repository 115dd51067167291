"""Where a batch's ancillary logits come from, for train-primary: the stored logits the batch
carries (a store, or in-memory logits), or the ancillary net run on its crops (online).

Both are plain callables `batch -> N x K x H x W float32 logits`, computed without gradient
(NaN on void pixels of box-method stores: `without_void`).
"""

from __future__ import annotations

import torch
from torch import nn

from boxseg.data.transforms import resample_cells
from boxseg.store import as_stored


class StoredLogits:
    """The stored logits of a W batch's crops, made on the training device from the cells the
    batch carries (`WeakTrainSet`: the cells under each crop and each pixel's coordinates
    among them), one `grid_sample` for the batch. `void`: the store may hold void cells
    (box-method stores); they come back as NaN pixels."""

    def __init__(self, void: bool):
        self.void = void

    @torch.no_grad()
    def __call__(self, batch: dict) -> torch.Tensor:
        return resample_cells(batch["cells"].float(), batch["rows"], batch["cols"], self.void)


def without_void(logits: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits with void pixels (NaN) zeroed, valid without them): void pixels carry no
    target. No host sync."""
    return logits.nan_to_num(0.0), valid & ~torch.isnan(logits[:, 0])


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
