"""Split a dataset's train split into F (masks) and W (boxes only), identically in every stage."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from boxseg.data.reader import list_entry
from boxseg.errors import BoxsegError
from boxseg.io import read_text


@dataclass(frozen=True)
class SplitSpec:
    """F = `num_full` ids drawn with `seed`, or the ids listed in `full_list`; W = the rest."""

    split: str = "train"
    num_full: int | None = None
    seed: int = 0
    full_list: Path | None = None

    def to_dict(self) -> dict:
        return {
            "split": self.split,
            "num_full": self.num_full,
            "seed": self.seed,
            "full_list": str(self.full_list) if self.full_list else None,
        }


def split_full_weak(ids: list[str], spec: SplitSpec) -> tuple[list[str], list[str]]:
    """Return (F ids, W ids), both in the split's order. Deterministic for a given spec."""
    if spec.full_list is not None:
        path = Path(spec.full_list)
        if not path.is_file():
            raise BoxsegError(f"{path}: full-list file not found")
        listed = [list_entry(s) for s in read_text(path).splitlines() if s.strip()]
        unknown = sorted(set(listed) - set(ids))
        if unknown:
            raise BoxsegError(
                f"{path}: {len(unknown)} ids not in split '{spec.split}' (first: {unknown[0]})"
            )
        chosen = set(listed)
    elif spec.num_full is not None:
        if not 0 < spec.num_full <= len(ids):
            raise BoxsegError(
                f"--num-full {spec.num_full}: must be between 1 and the {len(ids)} images of "
                f"split '{spec.split}'"
            )
        order = np.random.default_rng(spec.seed).permutation(len(ids))
        chosen = {ids[i] for i in order[: spec.num_full]}
    else:
        raise BoxsegError(
            "no F/W split given: pass --num-full N (with --seed-split) or --full-list FILE"
        )
    full = [i for i in ids if i in chosen]
    weak = [i for i in ids if i not in chosen]
    if not full:
        raise BoxsegError(
            f"the split gives an empty F (no fully labelled images in '{spec.split}')"
        )
    return full, weak


def fraction_of(ids: list[str], fraction: float, seed: int) -> list[str]:
    """A deterministic subset of `fraction` of `ids` (at least one), in their order.

    The conv recipe's stage 1 trains the ancillary net on half of F with this.
    """
    if not 0 < fraction <= 1:
        raise BoxsegError(f"--full-fraction {fraction}: must be in (0, 1]")
    n = max(1, round(len(ids) * fraction))
    keep = set(np.random.default_rng(seed + 1).permutation(len(ids))[:n].tolist())
    return [x for i, x in enumerate(ids) if i in keep]


def split_dataset(ds, spec: SplitSpec) -> tuple[list[str], list[str]]:
    """(F ids, W ids) of a dataset's split. Without --num-full or --full-list, a dataset that
    knows which images have masks (the folder layout) gives F = those, W = the rest."""
    ids = ds.ids(spec.split)
    if spec.num_full is None and spec.full_list is None and ds.masks_mark_full:
        full = [i for i in ids if ds.has_mask(spec.split, i)]
        if not full:
            raise BoxsegError(f"no image of split '{spec.split}' has a mask: F would be empty")
        chosen = set(full)
        return full, [i for i in ids if i not in chosen]
    return split_full_weak(ids, spec)
