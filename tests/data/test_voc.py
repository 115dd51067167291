"""The VOC 2012 + SBD reader, on a small tree the test writes in VOC's own formats."""

import numpy as np
import pytest
from PIL import Image

from boxseg.data.boxes import BoxSpec
from boxseg.data.formats import load_full, load_weak, open_dataset
from boxseg.data.sample import VOID
from boxseg.data.split import SplitSpec, split_dataset
from boxseg.data.voc import VOC_CLASSES, VocDataset
from boxseg.errors import BoxsegError
from boxseg.io import write_image
from boxseg.predict import palette

XML = """<annotation><filename>{id}.jpg</filename>
<size><width>40</width><height>30</height><depth>3</depth></size>{objects}</annotation>"""
OBJ = """<object><name>{name}</name><difficult>0</difficult>
<bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"""


def write_voc(root, n_train=6, n_seg=2, n_val=2):
    """VOC layout: JPEGs, palette masks for the segmentation lists, SBD-style greyscale masks
    for all of train_aug, XML boxes for every image."""
    for d in ("JPEGImages", "SegmentationClass", "SegmentationClassAug", "Annotations",
              "ImageSets/Segmentation"):  # fmt: skip
        (root / d).mkdir(parents=True, exist_ok=True)
    ids = [f"2007_{k:06d}" for k in range(n_train + n_val)]
    train, val = ids[:n_train], ids[n_train:]
    for k, i in enumerate(ids):
        write_image(root / "JPEGImages" / f"{i}.jpg", np.full((30, 40, 3), 40 * k % 255, np.uint8))
        mask = np.zeros((30, 40), np.uint8)
        mask[5:15, 10:30] = 15  # a person: VOC boxes 1-based inclusive -> xmin 11, ymin 6
        mask[20:25, 2:8] = 12  # a dog
        mask[0, :] = VOID
        objects = OBJ.format(name="person", x1=11, y1=6, x2=30, y2=15) + OBJ.format(
            name="dog", x1=3, y1=21, x2=8, y2=25)  # fmt: skip
        (root / "Annotations" / f"{i}.xml").write_text(XML.format(id=i, objects=objects))
        Image.fromarray(mask, "L").save(root / "SegmentationClassAug" / f"{i}.png")
        if i in train[:n_seg] or i in val:
            im = Image.fromarray(mask, "P")
            im.putpalette(palette(256).flatten().tolist())
            im.save(root / "SegmentationClass" / f"{i}.png")
    (root / "ImageSets/Segmentation/train.txt").write_text("\n".join(train[:n_seg]) + "\n")
    (root / "ImageSets/Segmentation/val.txt").write_text("\n".join(val) + "\n")
    (root / "ImageSets/Segmentation/train_aug.txt").write_text("\n".join(train) + "\n")
    return root


@pytest.fixture
def voc(tmp_path):
    return write_voc(tmp_path / "VOC2012")


def test_reader_images_masks_boxes_and_void(voc):
    ds = open_dataset(voc)
    assert isinstance(ds, VocDataset) and ds.class_names == VOC_CLASSES and ds.background == 0
    assert ds.ids("train_aug")[:2] == ["2007_000000", "2007_000001"] and ds.has_split("val")
    s = load_full(ds, "val", "2007_000006", BoxSpec())
    assert s.image.shape == (30, 40, 3)
    assert s.mask[10, 20] == 15 and s.mask[22, 5] == 12 and s.mask[0, 0] == VOID  # palette ids
    np.testing.assert_array_equal(s.boxes, [[10, 5, 30, 15], [2, 20, 8, 25]])  # 0-based, x2 excl.
    assert s.labels.tolist() == [15, 12]
    w = load_weak(ds, "train_aug", "2007_000004", BoxSpec(classes=(12,)))
    assert w.mask is None and w.labels.tolist() == [12]
    assert ds.read_mask("train_aug", "2007_000004")[10, 20] == 15  # SBD's greyscale mask


def test_paper_split_f_from_the_segmentation_list_w_the_rest(voc):
    ds = open_dataset(voc)
    full, weak = split_dataset(
        ds, SplitSpec("train_aug", full_list=voc / "ImageSets/Segmentation/train.txt")
    )
    assert full == ["2007_000000", "2007_000001"]
    assert weak == ["2007_000002", "2007_000003", "2007_000004", "2007_000005"]
    assert split_dataset(
        ds, SplitSpec("train_aug", full_list=voc / "ImageSets/Segmentation/train.txt")
    ) == (full, weak)  # deterministic


def test_bad_xml_boxes_are_clear_errors(voc):
    ds = open_dataset(voc)
    bad = voc / "Annotations" / "2007_000002.xml"
    bad.write_text(XML.format(id="x", objects=OBJ.format(name="unicorn", x1=1, y1=1, x2=5, y2=5)))
    with pytest.raises(BoxsegError, match=r"2007_000002.xml: line \d+: object 'unicorn': unknown"):
        ds.read_boxes("train_aug", "2007_000002", BoxSpec())
    bad.write_text(XML.format(id="x", objects=OBJ.format(name="dog", x1=9, y1=1, x2=5, y2=5)))
    with pytest.raises(BoxsegError, match=r"line \d+: object 'dog': bad box \(9, 1, 5, 5\)"):
        ds.read_boxes("train_aug", "2007_000002", BoxSpec())
    bad.write_text("<annotation>")
    with pytest.raises(BoxsegError, match=r"2007_000002.xml: line 1: not valid XML"):
        ds.read_boxes("train_aug", "2007_000002", BoxSpec())
