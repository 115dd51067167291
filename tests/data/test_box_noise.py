import numpy as np
import pytest

from boxseg.data.box_noise import LEVELS, BoxNoise, image_rng, noisy_boxes, parse_box_noise
from boxseg.errors import BoxsegError

H, W = 200, 300


def grid_boxes(n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """n boxes of 40x20 pixels well inside a 300x200 image, labels 0..4."""
    rng = np.random.default_rng(0)
    x = rng.uniform(40, 220, n)
    y = rng.uniform(40, 140, n)
    boxes = np.stack([x, y, x + 40, y + 20], 1).astype(np.float32)
    return boxes, np.arange(n) % 5


def test_off_returns_the_boxes_unchanged():
    boxes, labels = grid_boxes()
    b, lab = noisy_boxes(boxes, labels, H, W, BoxNoise(), image_rng(0, "a"))
    np.testing.assert_array_equal(b, boxes)
    np.testing.assert_array_equal(lab, labels)


def test_grow_makes_each_side_longer_by_the_fraction_centred():
    boxes, labels = grid_boxes()
    b, _ = noisy_boxes(boxes, labels, H, W, BoxNoise(grow=0.15), image_rng(0, "a"))
    np.testing.assert_allclose(b[:, 2] - b[:, 0], 40 * 1.15, atol=1e-4)
    np.testing.assert_allclose(b[:, 3] - b[:, 1], 20 * 1.15, atol=1e-4)
    np.testing.assert_allclose(b[:, 0] + b[:, 2], boxes[:, 0] + boxes[:, 2], atol=1e-3)


def test_shift_moves_each_edge_within_the_fraction_of_its_side_both_ways():
    boxes, labels = grid_boxes()
    b, _ = noisy_boxes(boxes, labels, H, W, BoxNoise(shift=0.25), image_rng(0, "a"))
    moved = (b - boxes) / np.array([40, 20, 40, 20])
    assert np.abs(moved).max() <= 0.25 + 1e-5
    assert moved.min() < -0.2 and moved.max() > 0.2  # both ways, nearly the whole range
    # edges move independently: the left and right edges are not shifted together
    assert np.corrcoef(moved[:, 0], moved[:, 2])[0, 1] < 0.2


def test_drop_removes_about_the_fraction_and_keeps_the_rest_exact():
    boxes, labels = grid_boxes(2000)
    b, lab = noisy_boxes(boxes, labels, H, W, BoxNoise(drop=0.2), image_rng(0, "a"))
    assert 0.17 < 1 - len(b) / 2000 < 0.23
    kept = {tuple(r) for r in boxes.tolist()}
    assert all(tuple(r) in kept for r in b.tolist())


def test_flip_changes_about_the_fraction_to_another_class():
    boxes, labels = grid_boxes(2000)
    _, lab = noisy_boxes(
        boxes, labels, H, W, BoxNoise(flip=0.1), image_rng(0, "a"), (0, 1, 2, 3, 4)
    )
    changed = lab != labels
    assert 0.08 < changed.mean() < 0.12
    assert set(lab[changed].tolist()) <= {0, 1, 2, 3, 4}


def test_boxes_stay_inside_the_image_and_at_least_a_pixel():
    boxes = np.array([[0, 0, 1, 1], [299, 199, 300, 200], [0, 0, 300, 200]], np.float32)
    for seed in range(20):
        b, _ = noisy_boxes(
            boxes, np.zeros(3), H, W, BoxNoise(shift=0.4, grow=1.0), image_rng(seed, "x")
        )
        assert (b[:, :2] >= 0).all() and (b[:, 2] <= W).all() and (b[:, 3] <= H).all()
        assert ((b[:, 2:] - b[:, :2]) >= 1 - 1e-5).all()


def test_seeded_per_image_and_levels_share_their_draws():
    boxes, labels = grid_boxes()
    a, _ = noisy_boxes(boxes, labels, H, W, LEVELS["mixed"], image_rng(3, "img_7"))
    b, _ = noisy_boxes(boxes, labels, H, W, LEVELS["mixed"], image_rng(3, "img_7"))
    c, _ = noisy_boxes(boxes, labels, H, W, LEVELS["mixed"], image_rng(3, "img_8"))
    np.testing.assert_array_equal(a, b)
    assert len(a) != len(c) or not np.array_equal(a, c)
    # missing20 drops a superset of what mixed (drop 0.1) drops, with the same dice
    m20, _ = noisy_boxes(boxes, labels, H, W, LEVELS["missing20"], image_rng(3, "img_7"))
    kept20 = {tuple(r) for r in m20.tolist()}
    m10, _ = noisy_boxes(boxes, labels, H, W, BoxNoise(drop=0.1), image_rng(3, "img_7"))
    assert kept20 <= {tuple(r) for r in m10.tolist()} and len(m20) < len(m10)


def test_parse_levels_and_pairs_and_errors():
    assert parse_box_noise("mixed") == BoxNoise(shift=0.1, grow=0.1, drop=0.1)
    assert parse_box_noise("shift=0.1, drop=0.2") == BoxNoise(shift=0.1, drop=0.2)
    assert BoxNoise.from_dict(parse_box_noise("grow=0.3").to_dict()) == BoxNoise(grow=0.3)
    assert parse_box_noise("off").describe() == "off"
    for bad in ("wobble=1", "shift", "drop=2", "shift=abc", "shift=0.6"):
        with pytest.raises(BoxsegError, match="box noise|--box-noise"):
            parse_box_noise(bad)
