"""Every layout's reader satisfies the one declared interface (reader.SegDataset)."""

import numpy as np
import pytest

from boxseg.data.formats import SegDataset, open_dataset
from boxseg.data.reader import check_mask
from boxseg.errors import BoxsegError
from tests.data.test_box_files import write_box_folder
from tests.data.test_cityscapes import write_cityscapes
from tests.data.test_folder import write_folder
from tests.data.test_voc import write_voc


@pytest.fixture(params=["segnet", "voc", "cityscapes", "folder", "yolo", "voc_xml"])
def dataset(request, tmp_path, tiny_data):
    root = {
        "segnet": lambda: tiny_data,
        "voc": lambda: write_voc(tmp_path / "voc"),
        "cityscapes": lambda: write_cityscapes(tmp_path / "cs"),
        "folder": lambda: write_folder(tmp_path / "f"),
        "yolo": lambda: write_box_folder(tmp_path / "y", "yolo"),
        "voc_xml": lambda: write_box_folder(tmp_path / "x", "voc_xml"),
    }[request.param]()
    return open_dataset(root)


def test_every_reader_satisfies_the_interface(dataset):
    assert isinstance(dataset, SegDataset)
    split = "train_aug" if dataset.layout == "voc" else "train"
    ids = dataset.ids(split)
    masked = [i for i in ids if dataset.has_mask(split, i)]
    assert masked and dataset.num_classes == len(dataset.class_names)
    image = dataset.read_image(split, masked[0])
    mask = dataset.read_mask(split, masked[0])
    assert image.ndim == 3 and image.shape[:2] == mask.shape and mask.dtype == np.uint8
    assert dataset.describe()["layout"] == dataset.layout
    assert dataset.masks_mark_full == (dataset.layout == "folder")


def test_one_mask_range_check_for_every_layout(tmp_path):
    mask = np.array([[0, 1], [255, 7]], np.uint8)
    with pytest.raises(BoxsegError, match=r"m.png: class id 7 out of range \(0..4, void 255\)"):
        check_mask(mask, tmp_path / "m.png", 5)
    assert check_mask(mask, tmp_path / "m.png", 8) is mask
