"""The largest tensor a piece of torch code makes: a deterministic stand-in for its peak memory
(process memory is noisy and torch's CPU allocator keeps what it freed)."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class LargestTensor(TorchDispatchMode):
    """While active, `nbytes` is the largest storage of any tensor an op returned (forward and
    backward alike; a view counts its base's storage) and `op` the op that made it."""

    def __init__(self):
        super().__init__()
        self.nbytes, self.op = 0, None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().nbytes() > self.nbytes:
                self.nbytes, self.op = t.untyped_storage().nbytes(), func
        return out


def largest_tensor(fn) -> int:
    """The bytes of the largest tensor `fn()` makes (see `LargestTensor`)."""
    with LargestTensor() as probe:
        fn()
    return probe.nbytes
