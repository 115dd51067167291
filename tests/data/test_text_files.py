"""Text files are read one way (UTF-8 with or without BOM, any line ends), split lists may name
images with spaces, image extensions are found in any case, 16-bit masks are range-checked
before the cast, and every box is checked against its image's real size."""

import shutil

import cv2
import numpy as np
import pytest

from boxseg.data.boxes import BoxSpec, fit_boxes
from boxseg.data.formats import open_dataset
from boxseg.data.reader import list_entry, read_class_names, read_id_list
from boxseg.errors import BoxsegError
from boxseg.io import read_label_png, read_text
from tests.data.test_box_files import write_box_folder
from tests.data.test_folder import write_folder


def test_bom_and_crlf_are_read_like_plain_utf8(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_bytes(b"\xef\xbb\xbfbackground\r\ncat\r\ndog\r\n")
    names, background = read_class_names(path)
    assert names == ("background", "cat", "dog") and background == 0  # the BOM is not a name
    path.write_bytes("ima\u00e9ge\n".encode("latin-1"))
    with pytest.raises(BoxsegError, match="not UTF-8 text .*offset 3"):
        read_text(path)


def test_split_list_entries():
    assert list_entry("my photo 1.jpg") == "my photo 1"
    assert list_entry("/SegNet/CamVid/train/a.png /SegNet/CamVid/trainannot/a.png") == "a"
    assert list_entry("img 7") == "img 7"
    assert list_entry("  img3  ") == "img3"


def test_folder_with_spaces_in_names_upper_case_extensions_and_crlf(tmp_path):
    root = write_folder(tmp_path / "f")
    shutil.move(root / "images" / "img7.jpg", root / "images" / "img 7.JPG")
    text = (root / "boxes.json").read_text().replace('"img7.jpg"', '"img 7.JPG"')
    (root / "boxes.json").write_text(text)
    (root / "val.txt").write_bytes(b"\xef\xbb\xbfimg6\r\nimg 7\r\n")
    ds = open_dataset(root)
    assert ds.ids("val") == ["img6", "img 7"]
    assert ds.image_path("val", "img 7").name == "img 7.JPG"
    assert len(ds.read_boxes("val", "img 7", BoxSpec())[1]) == 2


def test_sixteen_bit_masks_are_checked_before_the_cast(tmp_path):
    mask = np.zeros((4, 4), np.uint16)
    mask[0, 0] = 2
    cv2.imwrite(str(tmp_path / "ok.png"), mask)
    assert read_label_png(tmp_path / "ok.png").dtype == np.uint8
    mask[0, 0] = 258  # would wrap to 2
    cv2.imwrite(str(tmp_path / "bad.png"), mask)
    with pytest.raises(BoxsegError, match="bad.png: a uint16 mask with value 258"):
        read_label_png(tmp_path / "bad.png")


def test_boxes_are_fitted_to_the_image_on_disk(tmp_path):
    boxes = np.array([[-0.5, 0, 32.5, 10], [4, 4, 8, 8]], np.float32)
    assert fit_boxes(boxes, 32, 32, "f.xml").tolist() == [[0, 0, 32, 10], [4, 4, 8, 8]]
    with pytest.raises(BoxsegError, match="f.xml: box 1 .*outside the 32x32 image"):
        fit_boxes(np.array([[0, 0, 4, 4], [40, 40, 50, 50]], np.float32), 32, 32, "f.xml")
    root = write_box_folder(tmp_path / "x", "voc_xml")
    xml = root / "annotations" / "img4.xml"
    xml.write_text(xml.read_text().replace("<xmax>30</xmax>", "<xmax>900</xmax>"))
    with pytest.raises(BoxsegError, match="img4.xml: box 1 .*outside the 32x32 image"):
        open_dataset(root).read_boxes("train", "img4", BoxSpec())


def test_warning_when_no_weak_image_has_a_box(tmp_path, capsys):
    from tests.conftest import run_cli

    root = write_box_folder(tmp_path / "y", "yolo")
    for k in (3, 4, 5, 6, 7):  # the W images: empty label files
        (root / "labels" / f"img{k}.txt").write_text("")
    code, out, err = run_cli(["gen-logits", root, "--method", "box", "--out", tmp_path / "w.zarr"],
                             capsys)  # fmt: skip
    assert code == 0, err
    assert "W: 5 images of split 'train' (0 boxes)" in out
    assert "warning: the 5 W images of split 'train' have no boxes" in err


def test_id_list_with_names_holding_spaces(tmp_path):
    (tmp_path / "l.txt").write_text("a b\nc\n")
    assert read_id_list(tmp_path / "l.txt") == ["a b", "c"]
