import numpy as np
import pytest

from boxseg.data.boxes import BoxSpec
from boxseg.data.formats import CAMVID_CLASSES, load_full, load_weak, open_dataset
from boxseg.errors import BoxsegError
from boxseg.io import write_image, write_label_png
from tests.conftest import SHARED_CAMVID


def _camvid_like(root, mask_value=11):
    (root / "train").mkdir(parents=True)
    (root / "trainannot").mkdir()
    (root / "train.txt").write_text("a\nb\n")
    for k in "ab":
        write_image(root / "train" / f"{k}.jpg", np.full((8, 10, 3), 100, np.uint8))
        m = np.full((8, 10), 3, np.uint8)
        m[0, :] = mask_value
        m[4:6, 2:5] = 8
        write_label_png(root / "trainannot" / f"{k}.png", m)
    return root


def test_segnet_layout_without_classes_file_is_camvid(tmp_path):
    ds = open_dataset(_camvid_like(tmp_path / "cv"))
    assert ds.layout == "segnet" and ds.class_names == CAMVID_CLASSES and ds.background is None
    s = load_full(ds, "train", "a", BoxSpec(min_area=1))
    assert s.image.shape == (8, 10, 3) and s.mask.shape == (8, 10)
    assert (s.mask[0] == 255).all()  # void 11 -> 255
    assert sorted(s.labels.tolist()) == [3, 8]
    assert s.boxes[s.labels.tolist().index(8)].tolist() == [2, 4, 5, 6]


def test_weak_samples_carry_no_mask(tmp_path):
    ds = open_dataset(_camvid_like(tmp_path / "cv"))
    s = load_weak(ds, "train", "b", BoxSpec(min_area=1))
    assert s.mask is None and len(s.labels) == 2


def test_mask_with_out_of_range_class_is_refused(tmp_path):
    ds = open_dataset(_camvid_like(tmp_path / "cv", mask_value=40))
    with pytest.raises(BoxsegError, match=r"trainannot/a.png: class id 40 out of range"):
        ds.read_mask("train", "a")


def test_unknown_layout_lists_supported(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(BoxsegError, match="unknown dataset layout.*segnet"):
        open_dataset(tmp_path / "x")
    with pytest.raises(BoxsegError, match="not found"):
        open_dataset(tmp_path / "missing")


def test_missing_split_names_the_file(tiny_data):
    with pytest.raises(BoxsegError, match="test.txt: no such split list"):
        open_dataset(tiny_data).ids("test")


@pytest.mark.skipif(not SHARED_CAMVID.is_dir(), reason="../shared/data/camvid not present")
def test_real_camvid_reader():
    ds = open_dataset(SHARED_CAMVID)
    assert len(ds.ids("train")) == 367 and len(ds.ids("val")) == 101
    image_id = ds.ids("train")[0]
    s = load_full(ds, "train", image_id, BoxSpec(min_area=16))
    assert s.image.shape == (360, 480, 3) and s.mask.shape == (360, 480)
    assert set(np.unique(s.mask)) <= set(range(11)) | {255}
    assert len(s.boxes) > 0 and (s.boxes[:, 2] <= 480).all() and (s.boxes[:, 3] <= 360).all()
