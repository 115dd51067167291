import numpy as np
import pytest
import torch

from boxseg.data.boxes import boxes_from_mask
from boxseg.data.transforms import Aligned, AugParams, apply, draw_params


def _scene(h=40, w=50):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8)
    mask[5:15, 30:44] = 1
    # logits that are a pixel-exact function of the image: channel 0 = red value
    logits = torch.from_numpy(image[..., 0].astype(np.float32))[None].repeat(2, 1, 1)
    boxes, labels = boxes_from_mask(mask, 2, background=0)
    return Aligned(image, mask, boxes, labels, logits)


@pytest.mark.parametrize("flip", [False, True])
def test_crop_and_flip_keep_everything_aligned(flip):
    x = _scene()
    out = apply(x, AugParams(1.0, top=3, left=20, flip=flip), crop=32)
    np.testing.assert_array_equal(out.logits[0].numpy(), out.image[..., 0].astype(np.float32))
    b, _ = boxes_from_mask(out.mask, 2, background=0)
    np.testing.assert_array_equal(out.boxes, b)
    assert out.valid.all()


def test_scaled_logits_follow_the_image():
    x = _scene()
    out = apply(x, AugParams(1.7, top=10, left=25, flip=True), crop=32)
    diff = np.abs(out.logits[0].numpy() - out.image[..., 0].astype(np.float32))
    assert diff.mean() < 1.0  # only interpolation rounding
    b, _ = boxes_from_mask(out.mask, 2, background=0)
    np.testing.assert_allclose(out.boxes, b, atol=1.0)


def test_padding_is_void_and_invalid():
    x = _scene(20, 20)
    out = apply(x, AugParams(1.0, 0, 0, False), crop=32)
    assert out.image.shape == (32, 32, 3)
    assert (out.mask[20:, :] == 255).all() and (out.mask[:, 20:] == 255).all()
    assert out.valid[:20, :20].all() and not out.valid[20:].any() and not out.valid[:, 20:].any()
    assert (out.logits[:, 20:] == 0).all()


def test_draw_params_stay_inside():
    rng = np.random.default_rng(0)
    for _ in range(50):
        p = draw_params(rng, 40, 60, 32, (0.5, 2.0), True)
        h, w = round(40 * p.scale), round(60 * p.scale)
        assert 0 <= p.top <= max(h - 32, 0) and 0 <= p.left <= max(w - 32, 0)
