"""YOLO txt and VOC XML boxes in the folder layout: through the pipeline, and every malformed
file a one-line error naming the file and the line."""

import json

import numpy as np
import pytest

from boxseg.data.boxes import BoxSpec
from boxseg.data.formats import open_dataset
from boxseg.io import write_image, write_label_png
from tests.conftest import cli_pipeline, run_cli

CLASSES = ["background", "cat", "dog"]
CAT, DOG = (4, 4, 20, 12), (20, 20, 30, 30)  # x1, y1, x2, y2 (exclusive) on 32x32 images

XML = """<annotation>
  <size><width>32</width><height>32</height><depth>3</depth></size>
{objects}</annotation>
"""
OBJ = """  <object>
    <name>{name}</name>
    <bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox>
  </object>
"""


def yolo_line(cls: int, box: tuple[int, int, int, int], size: int = 32) -> str:
    x1, y1, x2, y2 = box
    return f"{cls} {(x1 + x2) / 2 / size:.6f} {(y1 + y2) / 2 / size:.6f} " \
           f"{(x2 - x1) / size:.6f} {(y2 - y1) / size:.6f}"  # fmt: skip


def write_box_folder(root, source: str, n=10, masked=(0, 1, 2, 8, 9), names="classes.txt"):
    """n 32x32 images with a cat and a dog box each; masks for `masked` (the rest is W); boxes
    as YOLO label files or VOC XML files."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    box_dir = root / ("labels" if source == "yolo" else "annotations")
    box_dir.mkdir()
    if names == "classes.txt":
        (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    else:  # an Ultralytics data.yaml, names as an id: name mapping
        (root / "data.yaml").write_text(
            "path: .\ntrain: images\nnames:\n"
            + "".join(f"  {i}: {c}\n" for i, c in enumerate(CLASSES))
        )
    for k in range(n):
        image = np.full((32, 32, 3), 40, np.uint8)
        image[CAT[1] : CAT[3], CAT[0] : CAT[2]] = (200, 50, 50)
        image[DOG[1] : DOG[3], DOG[0] : DOG[2]] = (50, 50, 200)
        write_image(root / "images" / f"img{k}.png", image)
        if source == "yolo":
            (box_dir / f"img{k}.txt").write_text(f"{yolo_line(1, CAT)}\n{yolo_line(2, DOG)}\n")
        else:
            objects = OBJ.format(name="cat", x1=CAT[0] + 1, y1=CAT[1] + 1, x2=CAT[2], y2=CAT[3])
            objects += OBJ.format(name="dog", x1=DOG[0] + 1, y1=DOG[1] + 1, x2=DOG[2], y2=DOG[3])
            (box_dir / f"img{k}.xml").write_text(XML.format(objects=objects))
        if k in masked:
            mask = np.zeros((32, 32), np.uint8)
            mask[CAT[1] : CAT[3], CAT[0] : CAT[2]] = 1
            mask[DOG[1] : DOG[3], DOG[0] : DOG[2]] = 2
            write_label_png(root / "masks" / f"img{k}.png", mask)
    (root / "train.txt").write_text("\n".join(f"img{k}" for k in range(n - 2)) + "\n")
    (root / "val.txt").write_text(f"img{n - 2}\nimg{n - 1}\n")
    return root


@pytest.mark.parametrize("source, names", [("yolo", "classes.txt"), ("yolo", "data.yaml"),
                                           ("voc_xml", "classes.txt")])  # fmt: skip
def test_boxes_read_as_the_pixels_they_cover(tmp_path, source, names):
    ds = open_dataset(write_box_folder(tmp_path / "d", source, names=names))
    assert ds.box_source == source and list(ds.class_names) == CLASSES and ds.background == 0
    boxes, labels = ds.read_boxes("train", "img3", BoxSpec())
    np.testing.assert_allclose(boxes, [CAT, DOG], atol=1e-3)
    assert labels.tolist() == [1, 2]
    assert not ds.has_mask("train", "img3") and ds.has_mask("train", "img0")
    boxes, labels = ds.read_boxes("train", "img3", BoxSpec(classes=(2,)))  # dogs only
    assert labels.tolist() == [2]


@pytest.mark.parametrize("source", ["yolo", "voc_xml"])
def test_pipeline_on_yolo_and_voc_xml_folders(tmp_path, capsys, source):
    root = write_box_folder(tmp_path / "d", source)
    assert cli_pipeline(root, tmp_path, capsys)["num_full"] == 3  # the masked train images
    code, _, err = run_cli(["eval", root, "--model", tmp_path / "p" / "model.pt", "--json",
                            tmp_path / "e.json"], capsys)  # fmt: skip
    assert code == 0, err
    assert set(json.loads((tmp_path / "e.json").read_text())["per_class_iou"]) == set(CLASSES)


YOLO_BAD = [
    ("1 0.3 0.25 0.5", "line 2: 4 columns"),
    ("1 0.3 x 0.5 0.25", "line 2: not numbers"),
    ("7 0.3 0.25 0.5 0.25", "line 2: class id 7 unknown"),
    ("1 0.9 0.25 0.5 0.25", "line 2: box 0.9 0.25 0.5 0.25 leaves the image"),
    ("2 0.3 0.25 -0.1 0.25", "line 2: box 0.3 0.25 -0.1 0.25 has a negative or non-finite"),
]
XML_BAD = [
    (XML.format(objects=OBJ.format(name="cat", x1=5, y1=5, x2=20, y2=12)
                + OBJ.format(name="zebra", x1=1, y1=1, x2=5, y2=5)), "line 7: object 'zebra'"),
    (XML.format(objects=OBJ.format(name="cat", x1=5, y1="five", x2=20, y2=12)),
     "line 5: object 'cat': ymin 'five' is not a number"),
    ("<annotation>\n  <object>\n</annotation>\n", "line 3: not valid XML"),
]  # fmt: skip


def bad_box_file(root, source: str, content: str):
    """Put a malformed box file for W image img4 into a folder from `write_box_folder` (a good
    first YOLO line, the bad one second); returns its path. The cases (YOLO_BAD, XML_BAD) run
    in tests/test_catalogue.py: one line naming the file and the line, exit 2."""
    if source == "yolo":
        path = root / "labels" / "img4.txt"
        path.write_text(f"{yolo_line(1, CAT)}\n{content}\n")
    else:
        path = root / "annotations" / "img4.xml"
        path.write_text(content)
    return path


def test_two_box_sources_are_refused_naming_both(tmp_path, capsys):
    root = write_box_folder(tmp_path / "d", "yolo")
    (root / "annotations").mkdir()
    code, _, err = run_cli(["split", root, "--num-full", "2", "--out", tmp_path / "s"], capsys)
    assert code == 2 and "two box sources, labels/ (yolo) and annotations/ (voc_xml)" in err


@pytest.mark.parametrize("source, click", [
    ("yolo", "2 0.5 0.5 0 0.25"),  # zero width
    ("voc_xml", OBJ.format(name="dog", x1=0, y1=9, x2=0, y2=16)),  # 0-based, clipped away
])  # fmt: skip
def test_a_click_box_is_read_left_out_and_counted_not_refused(tmp_path, capsys, source, click):
    """A box covering no pixel (what labelling tools export for a click) is no error: the file
    is read as it is, every consumer leaves the box out (`pixel_boxes`), and the stage's
    check says how many it left out."""
    from boxseg.data.boxes import pixel_boxes
    from boxseg.data.validate import usable_ids

    root = write_box_folder(tmp_path / "d", source)
    if source == "yolo":  # img4: a cat, then the click
        (root / "labels" / "img4.txt").write_text(f"{yolo_line(1, CAT)}\n{click}\n")
    else:  # img4: its cat and dog, then the click
        path = root / "annotations" / "img4.xml"
        path.write_text(path.read_text().replace("</annotation>", click + "</annotation>"))
    ds = open_dataset(root)
    boxes, labels = ds.read_boxes("train", "img4", BoxSpec())
    px = pixel_boxes(boxes, labels, 32, 32)
    assert px.keep.tolist()[-1] is False and px.dropped == 1
    np.testing.assert_array_equal(px.bounds[0], CAT)
    weak = [f"img{k}" for k in range(3, 8)]
    assert usable_ids(ds, "train", weak, False, False, None, "W", quiet=False) == weak
    out = capsys.readouterr().out
    assert "W: 5 images of split 'train' (" in out
    assert f"({9 if source == 'yolo' else 10} boxes; 1 covering no pixel left out)" in out
