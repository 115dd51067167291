"""Forward passes over stored images: same-size images together, in fixed groups.

gen-logits runs the ancillary (or primary) net on these passes, and rank runs the primary net
on them. A pass is always cut from one group of `batch_size` consecutive store indices, done
images included, so which images share a pass (batch composition changes the last bits of a
net's outputs) never depends on what was done before or on the number of ranks. Imports
nothing of boxseg: it stands on the ground floor.
"""

from __future__ import annotations

import numpy as np
import torch

CPU_PASS_PIXELS = 2**18  # on the CPU, bigger batches are no faster (docs/performance.md)


def forward_passes(
    sizes: np.ndarray, todo: list[int], batch_size: int, device: torch.device
) -> list[tuple[int, list[int]]]:
    """The forward passes that cover `todo`: (group, store indices) in order. `sizes`: each
    store image's (height, width). A group is `batch_size` consecutive store indices; the net
    runs on every image of a group (same-size images together, done ones included: batch
    composition changes the last bits of the outputs), so every image's values are the same
    whatever was done before. On the CPU a pass holds at most `CPU_PASS_PIXELS` pixels (at
    least one image)."""
    passes: list[tuple[int, list[int]]] = []
    wanted = set(todo)
    for group in sorted({i // batch_size for i in todo}):
        members = range(group * batch_size, min((group + 1) * batch_size, len(sizes)))
        by_size: dict[tuple[int, int], list[int]] = {}
        for i in members:
            by_size.setdefault((int(sizes[i][0]), int(sizes[i][1])), []).append(i)
        for (h, w), ids in by_size.items():
            n = batch_size
            if device.type == "cpu":  # a pixel budget per pass: big CPU batches are slower
                n = min(batch_size, max(1, CPU_PASS_PIXELS // (h * w)))
            passes += [
                (group, ids[k : k + n])
                for k in range(0, len(ids), n)
                if any(i in wanted for i in ids[k : k + n])
            ]
    return passes
