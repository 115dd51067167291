"""Derived boxes are cached per file and process, and a changed mask gives new boxes."""

import os
import shutil

import numpy as np
import pytest

from boxseg.data import box_cache
from boxseg.data.boxes import BoxSpec
from boxseg.data.formats import SegnetDataset, open_dataset
from boxseg.io import write_label_png


@pytest.fixture
def data(tiny_data, tmp_path):
    box_cache.clear()
    shutil.copytree(tiny_data, tmp_path / "d")
    yield tmp_path / "d"
    box_cache.clear()


def test_boxes_are_derived_once_per_file(data, monkeypatch):
    ds = open_dataset(data)
    image_id = ds.ids("train")[0]
    first = ds.read_boxes("train", image_id, BoxSpec(4))
    assert len(first[0]) > 0

    def no_mask(*a, **k):
        raise AssertionError("the mask was read again")

    monkeypatch.setattr(SegnetDataset, "read_mask", no_mask)
    again = ds.read_boxes("train", image_id, BoxSpec(4))
    np.testing.assert_array_equal(again[0], first[0])
    np.testing.assert_array_equal(again[1], first[1])
    again[0][:] = -1  # callers get copies
    np.testing.assert_array_equal(ds.read_boxes("train", image_id, BoxSpec(4))[0], first[0])
    with pytest.raises(AssertionError, match="read again"):  # another rule: derived anew
        ds.read_boxes("train", image_id, BoxSpec(1))


def test_a_changed_mask_file_changes_its_boxes(data):
    ds = open_dataset(data)
    image_id = ds.ids("train")[0]
    before = ds.read_boxes("train", image_id, BoxSpec(4))
    path = ds.mask_path("train", image_id)
    mask = np.zeros((32, 32), np.uint8)
    mask[4:12, 20:30] = 2  # one square box, same file name
    stat = path.stat()
    write_label_png(path, mask)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    boxes, labels = ds.read_boxes("train", image_id, BoxSpec(4))
    assert not np.array_equal(boxes, before[0]) or not np.array_equal(labels, before[1])
    np.testing.assert_array_equal(boxes, [[20, 4, 30, 12]])
    np.testing.assert_array_equal(labels, [2])
