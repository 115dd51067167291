"""Boxes derived from masks, cached in each process (each DataLoader worker has its own).

Deriving boxes means reading a mask and labelling its connected components (or, for
Cityscapes, scanning a 2-megapixel instance map per instance): done once per file, since the
files do not change during a run. The key holds each source file's path, size and
modification time (nanoseconds), so a rewritten mask gives new boxes, not stale ones.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from pathlib import Path

import numpy as np

from boxseg.data.boxes import BoxSpec

MAX_ENTRIES = 200_000  # a few hundred bytes each; past this, boxes are derived every time
_cache: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

Boxes = tuple[np.ndarray, np.ndarray]


def derived_boxes(
    files: Sequence[Path], spec: BoxSpec, derive: Callable[[], Boxes], extra: Hashable = None
) -> Boxes:
    """derive() the first time for these files (as they are now) and rule, then from memory;
    `extra` adds what else the result depends on (the dataset's classes). Returns copies."""
    key = (
        tuple((str(f), *_stamp(f)) for f in files),
        spec.min_area,
        spec.classes,
        extra,
    )
    hit = _cache.get(key)
    if hit is None:
        hit = derive()
        if len(_cache) < MAX_ENTRIES:
            _cache[key] = hit
    return hit[0].copy(), hit[1].copy()


def _stamp(path: Path) -> tuple[int, int]:
    try:
        st = Path(path).stat()
    except OSError:  # missing: derive() will say so in its own words
        return (-1, -1)
    return (st.st_size, st.st_mtime_ns)


def clear() -> None:
    _cache.clear()
