import numpy as np
import pytest
import torch

from boxseg.metrics import class_map, confusion_matrix, scores


def test_confusion_and_miou_by_hand():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 0]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 3]])
    conf = confusion_matrix(pred, target, 4)
    expected = np.array([[1, 1, 0, 1], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(conf, expected)
    s = scores(conf, ["a", "b", "c", "d"])
    # IoU: a 1/(3+2-1)=1/4, b 2/(2+3-2)=2/3, c 1/(2+1-1)=1/2, d 0/(0+1-0)=0
    assert s["per_class_iou"] == pytest.approx({"a": 25.0, "b": 200 / 3, "c": 50.0, "d": 0.0})
    assert s["miou"] == pytest.approx((25 + 200 / 3 + 50 + 0) / 4)
    assert s["pixel_acc"] == pytest.approx(4 / 7 * 100)
    assert s["confusion"] == expected.tolist()


def test_absent_class_is_null_and_not_averaged():
    conf = confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 1]), 3)
    s = scores(conf, ["a", "b", "c"])
    assert s["per_class_iou"]["c"] is None and s["miou"] == pytest.approx(100.0)


def test_class_map_is_argmax_with_the_first_class_on_ties():
    scores_ = torch.randn(5, 7, 9).round()  # rounded: many ties
    scores_[:, 0, 0] = 1.0  # all equal: class 0
    scores_[3, 1, 1] = scores_[1, 1, 1] = 50.0  # classes 1 and 3 tie: class 1
    pred = class_map(scores_)
    assert torch.equal(pred, scores_.argmax(0))
    assert pred[0, 0] == 0 and pred[1, 1] == 1
