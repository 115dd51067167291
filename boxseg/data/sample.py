"""The one sample type every reader returns."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

VOID = 255  # the label value for void/ignore pixels inside boxseg, whatever the files use


@dataclass(frozen=True)
class Sample:
    """One image with its annotations.

    image: HxWx3 uint8 RGB. mask: HxW uint8 class indices (VOID = ignore), or None for a weakly
    labelled image. boxes: Nx4 float32 xyxy in pixels (x2, y2 exclusive). labels: N int64.
    """

    id: str
    image: np.ndarray
    mask: np.ndarray | None
    boxes: np.ndarray
    labels: np.ndarray

    @property
    def size(self) -> tuple[int, int]:
        return int(self.image.shape[0]), int(self.image.shape[1])
