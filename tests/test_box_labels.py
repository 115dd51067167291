"""Box-fill and GrabCut pseudo-labels, and `gen-logits --method box|grabcut`."""

import json
import shutil

import cv2
import numpy as np
import pytest
import torch

from boxseg.box_labels import box_fill, grabcut_fill, labels_to_logits, painting_order
from boxseg.data.boxes import pixel_boxes
from boxseg.data.sample import VOID
from boxseg.store import LogitsStore
from tests.conftest import TINY_MODEL, TINY_TRAIN, run_cli


def test_box_fill_paints_small_boxes_over_large_ones():
    boxes = np.array([[5, 5, 10, 10], [0, 0, 15, 15], [12, 12, 20, 20]], np.float32)
    labels = np.array([2, 1, 3])
    order = painting_order(pixel_boxes(boxes, labels, 20, 20).bounds)
    assert order.tolist() == [1, 2, 0]  # 225, 64, 25 pixels
    out = box_fill(20, 20, boxes, labels, background=0)
    want = np.zeros((20, 20), np.uint8)
    want[0:15, 0:15] = 1
    want[12:20, 12:20] = 3  # smaller than box 1: on top of it where they overlap
    want[5:10, 5:10] = 2
    np.testing.assert_array_equal(out, want)
    no_bg = box_fill(20, 20, boxes, labels, background=None)
    assert (no_bg[want == 0] == VOID).all() and (no_bg[want != 0] == want[want != 0]).all()


def test_box_fill_and_the_prior_agree_on_which_box_is_smaller():
    """Box-fill and the prior both call the box of fewer covered pixels the smaller: box 0
    (1.5 x 1.5) and box 1 (2 x 2) cover the same 2 x 2 pixels, so the later box ends on top in
    box-fill, as the constraint's prior gives it the bonus."""
    from boxseg.box_constraint import BoxEvidence, ConstraintRule

    boxes = np.array([[0, 0, 1.5, 1.5], [0, 0, 2, 2]], np.float32)
    labels = np.array([1, 2])
    assert painting_order(pixel_boxes(boxes, labels, 4, 4).bounds).tolist() == [0, 1]
    with pytest.raises(TypeError, match="pixel_boxes"):  # float boxes: areas it would misjudge
        painting_order(boxes)
    filled = box_fill(4, 4, boxes, labels, background=0)
    bias = ConstraintRule.of(3, 0, None, prior=3.0).bias(
        BoxEvidence.whole([boxes], [labels], 4, 4))[0]  # fmt: skip
    favoured = torch.where(bias.max(0).values == 3.0, bias.argmax(0), 0).numpy()
    np.testing.assert_array_equal(filled, favoured)
    assert (filled[:2, :2] == 2).all() and (filled[2:] == 0).all()


def test_a_box_covering_no_pixel_paints_nothing_and_is_no_grabcut_fallback():
    image, _ = _disc_image()
    boxes = np.array([[15, 15, 66, 66], [70, 10, 70, 30]], np.float32)  # a box; a click
    labels = np.array([1, 2])
    out, fallbacks = grabcut_fill(image, boxes, labels, background=0)
    alone, _ = grabcut_fill(image, boxes[:1], labels[:1], background=0)
    assert fallbacks == 0
    np.testing.assert_array_equal(out, alone)
    np.testing.assert_array_equal(box_fill(80, 80, boxes, labels, 0),
                                  box_fill(80, 80, boxes[:1], labels[:1], 0))  # fmt: skip


def _disc_image():
    rng = np.random.default_rng(0)
    image = (rng.normal(120, 6, (80, 80, 3))).clip(0, 255).astype(np.uint8)  # plain grey
    disc = np.zeros((80, 80), np.uint8)
    cv2.circle(disc, (40, 40), 15, 1, -1)
    image[disc == 1] = (200, 40, 40)
    return image, disc.astype(bool)


def test_grabcut_separates_an_object_inside_a_loose_box():
    image, disc = _disc_image()
    box = np.array([[15, 15, 66, 66]], np.float32)  # loose: 25 pixels around a 15 px radius
    out, fallbacks = grabcut_fill(image, box, np.array([1]), background=0)
    fg = out == 1

    def iou(a, b):
        return (a & b).sum() / (a | b).sum()

    box_iou = iou(box_fill(80, 80, box, np.array([1]), 0) == 1, disc)
    assert fallbacks == 0
    assert iou(fg, disc) > 0.85 and iou(fg, disc) > box_iou + 0.3  # box alone: about 0.27


def test_grabcut_falls_back_to_box_fill_and_keeps_void():
    image, _ = _disc_image()
    boxes = np.array([[3, 3, 4, 4], [0, 0, 80, 80]], np.float32)  # 1 pixel; the whole image
    out, fallbacks = grabcut_fill(image, boxes, np.array([2, 1]), background=None)
    assert fallbacks == 2
    assert out[3, 3] == 2 and (out[np.arange(80) != 3] == 1).all()
    out, _ = grabcut_fill(image, np.zeros((0, 4), np.float32), np.zeros(0, int), None)
    assert (out == VOID).all()


def test_grabcut_does_not_depend_on_what_ran_before():
    # a smooth random scene where GrabCut's k-means start (OpenCV's global generator) decides
    # between half of this box and none of it unless the generator is reseeded per box
    rng = np.random.default_rng(19)
    base = cv2.GaussianBlur((rng.random((90, 120, 3)) * 255).astype(np.float32), (0, 0), 6)
    base = cv2.normalize(base, None, 0, 255, cv2.NORM_MINMAX)
    image = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    box, label = np.array([[54, 0, 120, 50]], np.float32), np.array([1])
    outs = []
    for state in (0, 1, 2, 3):  # as if other images had drawn from the generator first
        cv2.setRNGSeed(state)
        outs.append(grabcut_fill(image, box, label, background=0)[0])
    assert all((o == outs[0]).all() for o in outs)
    assert 0.2 < (outs[0] == 1).sum() / (66 * 50) < 0.8  # GrabCut's mask, not the filled box


def test_labels_to_logits_confidence_and_void():
    labels = np.array([[0, 1], [2, VOID]], np.uint8)
    logits = labels_to_logits(labels, 3, confidence=0.9)
    p = torch.softmax(logits[:, :1, :], 0)
    torch.testing.assert_close(p[:, 0, 0], torch.tensor([0.9, 0.05, 0.05]))
    assert logits[:, :, :].argmax(0)[0, 1] == 1 and logits[:, 1, 0].argmax() == 2
    assert torch.isnan(logits[:, 1, 1]).all() and not torch.isnan(logits[:, :, 0]).any()


def _no_background_copy(tiny_data, tmp_path):
    """The tiny data without a background class, like CamVid: the class is renamed and its
    pixels made void, so only the objects get boxes."""
    from boxseg.io import read_label_png, write_label_png

    data = tmp_path / "nobg"
    shutil.copytree(tiny_data, data)
    names = (data / "classes.txt").read_text().split("\n")
    renamed = ["unused" if n == "background" else n for n in names]
    (data / "classes.txt").write_text("\n".join(renamed))
    for path in (data / "trainannot").glob("*.png"):
        mask = read_label_png(path)
        write_label_png(path, np.where(mask == names.index("background"), VOID, mask))
    return data


@pytest.mark.parametrize("method", ["box", "grabcut"])
def test_gen_logits_box_methods_store_train_and_eval(tiny_data, tmp_path, capsys, method):
    data = _no_background_copy(tiny_data, tmp_path)
    store = tmp_path / f"{method}.zarr"
    code, _, err = run_cli(
        [
            "gen-logits",
            data,
            "--method",
            method,
            "--out",
            store,
            "--num-full",
            "4",
            "--box-min-area",
            "4",
            "--workers",
            "2",
            "--quiet",
        ],
        capsys,
    )
    assert code == 0, err
    s = LogitsStore.open(store)
    assert s.attrs["method"] == method and s.attrs["method_options"]["confidence"] == 0.9
    assert s.attrs["checkpoint_sha256"] is None and s.done_mask().all()
    void = torch.isnan(s.read_full(0)).any(0)
    assert void.any() and not void.all()  # outside the boxes: void, not a class

    report = tmp_path / "q.json"
    code, _, err = run_cli(
        ["eval", data, "--split", "train", "--logits", store, "--json", report, "--quiet"], capsys
    )
    assert code == 0, err
    scores = json.loads(report.read_text())
    assert scores["method"] == method and 0 < scores["coverage"] <= 100
    if method == "box":  # objects of a few pixels are too small for GrabCut's colour models
        assert scores["miou"] > 30 and scores["coverage"] > 90

    code, _, err = run_cli(
        [
            "train-primary",
            data,
            "--out",
            tmp_path / "p",
            "--logits",
            store,
            "--num-full",
            "4",
            *TINY_MODEL,
            *TINY_TRAIN,
        ],
        capsys,
    )
    assert code == 0, err
    losses = [
        json.loads(x)["loss"] for x in (tmp_path / "p" / "metrics.jsonl").open() if "loss" in x
    ]
    assert losses and all(np.isfinite(losses))  # NaN (void) pixels were ignored


def test_box_store_with_background_fills_every_pixel(tiny_data, tmp_path, capsys):
    store = tmp_path / "b.zarr"
    code, _, err = run_cli(
        [
            "gen-logits",
            tiny_data,
            "--method",
            "box",
            "--out",
            store,
            "--num-full",
            "4",
            "--dtype",
            "int8",
            "--quiet",
        ],
        capsys,
    )
    assert code == 0, err
    s = LogitsStore.open(store)
    assert not torch.isnan(s.read_full(0)).any()  # a background class: no void anywhere
    code, _, err = run_cli(
        [
            "gen-logits",
            tiny_data,
            "--method",
            "box",
            "--out",
            store,
            "--num-full",
            "4",
            "--confidence",
            "0.8",
            "--quiet",
        ],
        capsys,
    )
    assert code == 2 and "other dtype" in err
    code, _, err = run_cli(
        [
            "gen-logits",
            tiny_data,
            "--method",
            "anc",
            "--out",
            tmp_path / "x",
            "--num-full",
            "4",
            "--quiet",
        ],
        capsys,
    )
    assert code == 2 and "needs --model" in err
