import numpy as np

from boxseg.data.boxes import box_channels, boxes_from_mask, rasterize_boxes
from boxseg.data.sample import VOID


def test_boxes_from_mask_one_box_per_component():
    mask = np.zeros((20, 30), np.uint8)
    mask[2:5, 3:9] = 1  # component A of class 1
    mask[10:18, 20:25] = 1  # component B of class 1
    mask[12:14, 2:4] = 2  # 4 pixels of class 2
    mask[0:2, 28:30] = VOID
    boxes, labels = boxes_from_mask(mask, num_classes=3, background=0)
    got = sorted(zip(labels.tolist(), boxes.tolist(), strict=True))
    assert got == [(1, [3, 2, 9, 5]), (1, [20, 10, 25, 18]), (2, [2, 12, 4, 14])]


def test_boxes_from_mask_min_area_and_classes():
    mask = np.zeros((20, 30), np.uint8)
    mask[2:5, 3:9] = 1  # 18 px
    mask[12:14, 2:4] = 2  # 4 px
    boxes, labels = boxes_from_mask(mask, 3, min_area=5, background=0)
    assert labels.tolist() == [1]
    boxes, labels = boxes_from_mask(mask, 3, classes=[2], background=0)
    assert labels.tolist() == [2] and boxes.tolist() == [[2, 12, 4, 14]]


def test_boxes_from_mask_without_background_class_boxes_every_class():
    mask = np.zeros((6, 6), np.uint8)
    mask[3:, :] = 1
    _, labels = boxes_from_mask(mask, 2, background=None)
    assert sorted(labels.tolist()) == [0, 1]


def test_rasterize_exact_pixels_and_channels():
    boxes = np.array([[2, 1, 5, 4], [4, 3, 7, 6]], np.float32)
    labels = np.array([1, 2])
    t = rasterize_boxes(boxes, labels, num_classes=3, height=8, width=9, background=0)
    assert t.shape == (3, 8, 9)
    expect1 = np.zeros((8, 9))
    expect1[1:4, 2:5] = 1  # noqa: E702
    expect2 = np.zeros((8, 9))
    expect2[3:6, 4:7] = 1  # noqa: E702
    np.testing.assert_array_equal(t[1], expect1)
    np.testing.assert_array_equal(t[2], expect2)
    # background channel: 1 exactly outside all boxes; overlap sets both class channels
    np.testing.assert_array_equal(t[0], 1 - np.maximum(expect1, expect2))
    assert t[1, 3, 4] == 1 and t[2, 3, 4] == 1


def test_rasterize_extra_channel_without_background():
    boxes = np.array([[0, 0, 2, 2]], np.float32)
    t = rasterize_boxes(boxes, np.array([0]), num_classes=2, height=3, width=3, background=None)
    assert t.shape == (box_channels(2, None), 3, 3) == (3, 3, 3)
    assert t[0].sum() == 4 and t[1].sum() == 0 and t[2].sum() == 5 and t[2, 0, 0] == 0


def test_rasterize_clips_out_of_image_boxes():
    t = rasterize_boxes(np.array([[-5, -5, 2, 100]], np.float32), np.array([1]), 2, 4, 4, 0)
    assert t[1].sum() == 2 * 4 and t[1, :, :2].all()
