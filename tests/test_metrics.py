import numpy as np
import pytest
import torch

from boxseg.metrics import class_map, confusion_counts, confusion_matrix, scores


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


def test_confusion_counts_skip_void_without_filtering_and_refuse_a_class_out_of_range():
    """The device-side counts (void pixels binned then dropped, no boolean indexing) equal
    numpy's count of the non-void pixels; a class index out of range is an error, not a
    count, even where target * K + pred would land in a real cell."""
    rng = np.random.default_rng(0)
    target = rng.integers(0, 5, (40, 30)).astype(np.uint8)
    target[rng.random((40, 30)) < 0.3] = 255
    target[0, 0] = 255  # a void pixel where pred and target would land in bin 0
    pred = rng.integers(0, 5, (40, 30))
    pred[0, 0] = 0
    keep = target != 255
    want = np.bincount(target[keep] * 5 + pred[keep], minlength=25).reshape(5, 5)
    got = confusion_counts(torch.from_numpy(pred), torch.from_numpy(target), 5)
    assert got.dtype == torch.int64 and np.array_equal(got.numpy(), want)
    assert got.sum() == keep.sum() < target.size
    with pytest.raises(ValueError, match="not below 5"):
        confusion_counts(torch.tensor([5]), torch.tensor([4]), 5)
    out_of_range = [  # (pred, target), each of whose pairs lands inside the 5 x 5 cells
        ([5, 7], [0, 1]),  # a prediction past K: bins 5 and 12, cells (1, 0) and (2, 2)
        ([0, 6], [1, 255]),  # a prediction past K on a void pixel
        ([-1, 0], [2, 0]),  # a negative prediction: bin 9
        ([0, 0], [1, 7]),  # a target neither a class nor void: bin 35
    ]
    for pred_, target_ in out_of_range:
        with pytest.raises(ValueError, match="not below 5"):
            confusion_counts(torch.tensor(pred_), torch.tensor(target_, dtype=torch.uint8), 5)
