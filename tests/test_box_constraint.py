"""Box-consistent ancillary logits (box_constraint.py)."""

import json

import numpy as np
import pytest
import torch

from boxseg.box_constraint import NEG, BoxConstraint, box_bias, constraint_of, pool_bias
from boxseg.errors import BoxsegError

BOXES = np.array([[2, 2, 14, 12], [8, 4, 10, 16], [20, 0, 32, 32]], np.float32)  # xyxy


def _inside(box, h, w) -> np.ndarray:
    m = np.zeros((h, w), bool)
    x1, y1, x2, y2 = box.astype(int)
    m[y1:y2, x1:x2] = True
    return m


@pytest.mark.parametrize("background", [None, 0])
def test_a_class_never_wins_outside_its_boxes(background):
    """Random (large) logits: after the bias, a boxed class wins only inside one of its boxes;
    with a background class, background may win anywhere."""
    k, h, w = 4, 24, 32
    labels = np.array([1, 2, 1])
    bias = torch.from_numpy(box_bias(BOXES, labels, k, h, w, background))
    torch.manual_seed(0)
    for _ in range(20):
        logits = torch.randn(k, h, w) * 50
        winner = (logits + bias).argmax(0).numpy()
        for c in (1, 2, 3):
            own = np.zeros((h, w), bool)
            for box, label in zip(BOXES, labels, strict=True):
                own |= _inside(box, h, w) if label == c else False
            covered = np.zeros((h, w), bool)
            for box in BOXES:
                covered |= _inside(box, h, w)
            allowed = own | (~covered if background is None else False)
            assert not ((winner == c) & ~allowed).any(), c
    if background is not None:  # background is allowed inside the boxes too
        assert (bias[background] == 0).all()


def test_no_background_uncovered_pixels_are_left_to_the_net():
    bias = box_bias(BOXES[:1], np.array([1]), 3, 16, 16, None)
    outside = ~_inside(BOXES[0], 16, 16)
    assert (bias[:, outside] == 0).all()  # every class allowed where no box is
    inside = _inside(BOXES[0], 16, 16)
    assert (bias[1, inside] == 0).all() and (bias[[0, 2]][:, inside] == -NEG).all()


def test_classes_without_boxes_are_allowed_everywhere():
    # classes 1 and 2 get boxes (--box-classes), classes 0 and 3 (stuff) never do
    bias = box_bias(BOXES, np.array([1, 2, 1]), 4, 24, 32, None, box_classes=(1, 2))
    assert (bias[[0, 3]] == 0).all()
    assert (bias[1] == -NEG).any() and (bias[2] == -NEG).any()
    every = box_bias(BOXES, np.array([1, 2, 1]), 4, 24, 32, None)  # default: all get boxes
    assert (every[0] == -NEG).any()


def test_prior_goes_to_the_smallest_covering_box():
    bias = box_bias(BOXES[:2], np.array([1, 2]), 3, 16, 16, None, prior=4.0)
    # box 1 (2x12) is smaller than box 0 (12x10): where they overlap, class 2 gets the bonus
    assert bias[2, 6, 9] == 4.0 and bias[1, 6, 9] == 0.0
    assert bias[1, 3, 3] == 4.0  # only box 0 covers this pixel
    assert (bias[:, 15, 0] == 0).all()  # outside all boxes: no prior


def test_pool_bias_keeps_a_class_in_every_cell_its_box_touches():
    bias = torch.from_numpy(box_bias(np.array([[5, 0, 6, 16]], np.float32), np.array([1]),
                                     2, 16, 16, 0))  # fmt: skip
    pooled = pool_bias(bias, 4)
    assert pooled.shape == (2, 4, 4)
    assert (pooled[1, :, 1] == 0).all()  # the 1-pixel box's column of cells allows class 1
    assert (pooled[1, :, [0, 2, 3]] == -NEG).all()


def test_constraint_of_follows_the_model_and_the_rule():
    meta = {"kind": "ancillary", "class_names": ["a", "b"], "background": None,
            "boxes": {"classes": [1]}}  # fmt: skip
    assert constraint_of(meta, BoxConstraint(False)) is None
    assert constraint_of(meta | {"kind": "primary"}, BoxConstraint()) is None
    maker = constraint_of(meta, BoxConstraint(True, 2.0))
    b = maker(np.array([[0, 0, 2, 2]], np.float32), np.array([1]), 4, 4)
    assert b.shape == (2, 4, 4) and b[1, 0, 0] == 2.0 and (b[0] == 0).all()  # 'a' is unboxed
    with pytest.raises(BoxsegError, match="--box-prior"):
        BoxConstraint(True, -1.0).validate()


def test_cli_store_records_the_rule_and_eval_applies_it(pipeline, tmp_path, capsys):
    """gen-logits --no-box-constraint / --box-prior are recorded in the store; a store with the
    constraint never labels a pixel with a class whose boxes do not touch its cell; eval of the
    ancillary model takes the same flags."""
    from boxseg.data.boxes import BoxSpec
    from boxseg.data.formats import load_weak, open_dataset
    from boxseg.store import LogitsStore
    from tests.conftest import run_cli

    off = tmp_path / "off.zarr"
    code, _, err = run_cli(["gen-logits", pipeline["data"], "--model", pipeline["anc"], "--out",
                            off, "--num-full", "4", "--device", "cpu", "--quiet",
                            "--no-box-constraint"], capsys)  # fmt: skip
    assert code == 0, err
    assert LogitsStore.open(off).attrs["box_constraint"] == {"enabled": False, "prior": 0.0}
    on = LogitsStore.open(pipeline["store"])
    ds = open_dataset(pipeline["data"])
    for i, image_id in enumerate(on.image_ids):
        s = load_weak(ds, "train", image_id, BoxSpec(4))
        allowed = pool_bias(torch.from_numpy(box_bias(s.boxes, s.labels, 5, 32, 32, 0)), 4) == 0
        winner = on.read(i).float().argmax(0)
        assert allowed.gather(0, winner[None]).all()  # every cell's winner is allowed there
    # resuming with another rule is refused, not mixed
    again = ["gen-logits", pipeline["data"], "--model", pipeline["anc"], "--out", off,
             "--num-full", "4", "--device", "cpu", "--quiet"]  # fmt: skip
    code, _, err = run_cli(again, capsys)
    assert code == 2 and "box constraint" in err
    scores = {}
    for flags in ([], ["--no-box-constraint"]):
        out = tmp_path / f"eval{len(flags)}.json"
        code, _, err = run_cli(["eval", pipeline["data"], "--model", pipeline["anc"], "--split",
                                "val", "--device", "cpu", "--quiet", "--json", out, *flags],
                               capsys)  # fmt: skip
        assert code == 0, err
        scores[len(flags)] = json.loads(out.read_text())["pixel_acc"]
    # boxes derived from the masks always allow the true class, so the constraint only changes
    # pixels whose raw winner was wrong: accuracy cannot drop (tiny components aside)
    assert scores[0] >= scores[1] - 0.5, scores


def test_train_anc_with_the_constraint_in_its_loss(tiny_data, tmp_path, capsys):
    from tests.conftest import TINY_MODEL, TINY_TRAIN, run_cli

    code, _, err = run_cli(["train-anc", tiny_data, "--out", tmp_path / "a", "--num-full", "4",
                            "--box-constraint-loss", "--val-split", "", *TINY_MODEL,
                            *TINY_TRAIN], capsys)  # fmt: skip
    assert code == 0, err
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["constraint_loss"] is True
    losses = [
        json.loads(x)["loss"]
        for x in (tmp_path / "a" / "metrics.jsonl").read_text().split("\n")
        if x
    ]
    assert all(np.isfinite(losses)) and max(losses) < 100  # no -1e4 logit leaked into the loss
