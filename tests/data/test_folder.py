"""The folder layout with COCO-style boxes, on fixtures the test writes."""

import json

import numpy as np
import pytest

from boxseg.data.boxes import BoxSpec
from boxseg.data.folder import FolderDataset
from boxseg.data.formats import load_full, load_weak, open_dataset
from boxseg.data.sample import VOID
from boxseg.data.split import SplitSpec, split_dataset
from boxseg.errors import BoxsegError
from boxseg.io import write_image, write_label_png
from tests.conftest import cli_pipeline, run_cli

CLASSES = ["background", "cat", "dog"]


def write_folder(root, n=8, with_png=(0, 1), with_polygons=(2,)):
    """n 32x32 images, a cat square and a dog square in each; masks as PNG for `with_png`,
    as COCO polygons for `with_polygons`, none (weak) for the rest."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    doc = {"images": [], "annotations": [], "categories": [{"id": 7, "name": "cat"},
                                                           {"id": 9, "name": "dog"}]}  # fmt: skip
    for k in range(n):
        stem = f"img{k}"
        image = np.zeros((32, 32, 3), np.uint8)
        image[4:12, 4:20] = (200, 50, 50)
        write_image(root / "images" / f"{stem}.jpg", image)
        doc["images"].append({"id": 100 + k, "file_name": f"{stem}.jpg", "width": 32,
                              "height": 32})  # fmt: skip
        cat = {"id": 2 * k, "image_id": 100 + k, "category_id": 7, "bbox": [4, 4, 16, 8]}
        dog = {"id": 2 * k + 1, "image_id": 100 + k, "category_id": 9, "bbox": [20, 20, 10, 10]}
        if k in with_polygons:
            cat["segmentation"] = [[4, 4, 19, 4, 19, 11, 4, 11]]
            dog["segmentation"] = [[20, 20, 29, 20, 29, 29, 20, 29]]
        doc["annotations"] += [cat, dog]
        if k in with_png:
            mask = np.zeros((32, 32), np.uint8)
            mask[4:12, 4:20], mask[20:30, 20:30], mask[31] = 1, 2, VOID
            write_label_png(root / "masks" / f"{stem}.png", mask)
    (root / "boxes.json").write_text(json.dumps(doc))
    (root / "train.txt").write_text("\n".join(f"img{k}" for k in range(n - 2)) + "\n")
    (root / "val.txt").write_text(f"img{n - 2}\nimg{n - 1}\n")
    return root


def test_reader_boxes_masks_polygons_and_the_default_split(tmp_path):
    root = write_folder(tmp_path / "f", with_png=(0, 1, 6, 7))
    ds = open_dataset(root)
    assert isinstance(ds, FolderDataset) and ds.class_names == tuple(CLASSES)
    s = load_full(ds, "train", "img0", BoxSpec())
    np.testing.assert_array_equal(s.boxes, [[4, 4, 20, 12], [20, 20, 30, 30]])
    assert s.labels.tolist() == [1, 2] and s.mask[31, 0] == VOID and s.mask[5, 5] == 1
    drawn = ds.read_mask("train", "img2")  # from the polygons: the same squares
    assert drawn[5, 5] == 1 and drawn[25, 25] == 2 and drawn[0, 0] == 0 and drawn[15, 15] == 0
    np.testing.assert_array_equal(drawn[4:12, 4:20], 1)
    assert load_weak(ds, "train", "img3", BoxSpec()).mask is None
    full, weak = split_dataset(ds, SplitSpec("train"))  # F = the images with a mask
    assert full == ["img0", "img1", "img2"] and weak == ["img3", "img4", "img5"]
    assert len(split_dataset(ds, SplitSpec("train", 2, 0))[0]) == 2  # --num-full still draws
    with pytest.raises(BoxsegError, match="img3.png: no mask for this image"):
        ds.read_mask("train", "img3")


@pytest.mark.parametrize("bbox, problem", [
    ([30, 30, 10, 10], "lies outside the 32x32 image"),
    ([-5, 0, 4, 4], "lies outside"),
    ([4, 4, -1, 5], "negative size"),
    ([4, 4, float("nan"), 5], "not finite"),
])  # fmt: skip
def test_malformed_boxes_name_the_file_the_image_and_the_problem(tmp_path, bbox, problem):
    root = write_folder(tmp_path / "f")
    doc = json.loads((root / "boxes.json").read_text())
    doc["annotations"][6]["bbox"] = bbox  # img3's cat
    (root / "boxes.json").write_text(json.dumps(doc))
    with pytest.raises(BoxsegError, match=f"boxes.json: box .* of img3 .*{problem}"):
        open_dataset(root).read_boxes("train", "img3", BoxSpec())


def test_unknown_class_name(tmp_path):
    root = write_folder(tmp_path / "f")
    doc = json.loads((root / "boxes.json").read_text())
    doc["categories"][1]["name"] = "horse"
    (root / "boxes.json").write_text(json.dumps(doc))
    with pytest.raises(BoxsegError, match="boxes.json: unknown class name 'horse'"):
        open_dataset(root).read_boxes("train", "img3", BoxSpec())


def test_pipeline_on_the_folder_layout(tmp_path, capsys):
    root = write_folder(tmp_path / "f", n=10, with_png=(0, 1, 2, 8, 9), with_polygons=(3,))
    assert cli_pipeline(root, tmp_path, capsys)["num_full"] == 4


def test_eval_of_a_store_scores_the_weak_images_that_have_masks(tmp_path, capsys):
    """A user masks 5 of W's 8 images to check the pseudo-labels: eval --logits scores those
    5 and says the other 3 have none; a store none of whose images has a mask is one line."""
    root = write_folder(
        tmp_path / "f", n=14, with_png=(0, 1, 2, 3, 4, 5, 6, 7, 8), with_polygons=()
    )
    (tmp_path / "f.txt").write_text("img0\nimg1\nimg2\nimg3\n")  # F; W = img4 ... img11
    store = tmp_path / "w.zarr"
    code, _, err = run_cli(["gen-logits", root, "--method", "box", "--full-list",
                            tmp_path / "f.txt", "--out", store, "--quiet"], capsys)  # fmt: skip
    assert code == 0, err
    code, out, err = run_cli(["eval", root, "--split", "train", "--logits", store, "--json",
                              tmp_path / "e.json"], capsys)  # fmt: skip
    assert code == 0, err
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["images_scored"] == 5 and result["images_without_mask"] == 3
    assert "scored the 5 store images that have a mask; the other 3 have none" in out
    # box-fill of these boxes is exact where the boxes do not overlap: a high score
    assert result["per_class_iou"]["cat"] > 80 and result["per_class_iou"]["dog"] > 80
    for k in range(4, 9):  # now no W image has a mask
        (root / "masks" / f"img{k}.png").unlink()
    code, _, err = run_cli(["eval", root, "--split", "train", "--logits", store], capsys)
    assert code == 2 and "none of its 8 images has a mask" in err
