"""Dataset checks (data/validate.py) against a logits source: W's images have the sizes their
logits were made for."""

import re

import pytest
import torch

from boxseg.data.formats import open_dataset
from boxseg.data.validate import check_sizes
from boxseg.errors import BoxsegError
from boxseg.store import InMemoryLogits


def test_check_sizes_names_the_image_whose_logits_are_for_another_size(tiny_data):
    ds = open_dataset(tiny_data)
    ids = ds.ids("train")[:3]
    logits = {i: torch.zeros(2, 32, 32) for i in ids}  # the tiny set's images are 32x32
    check_sizes(ds, "train", InMemoryLogits(logits, ["a", "b"]), ids, "w.zarr")
    logits[ids[1]] = torch.zeros(2, 32, 40)
    path = ds.image_path("train", ids[1])
    want = f"w.zarr: logits of {ids[1]} are for a 40x32 image, {path} is 32x32"
    with pytest.raises(BoxsegError, match=re.escape(want)):
        check_sizes(ds, "train", InMemoryLogits(logits, ["a", "b"]), ids, "w.zarr")
