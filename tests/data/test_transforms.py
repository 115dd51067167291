"""Joint augmentation (transforms.py): the crop, flip and scale keep the image, mask, boxes
and W's logits aligned; the crop-first path gives the plain path's crop
(tests/helpers/plain_path.py). W's logits are checked as train-primary makes them: the
`WeakTrainSet` item (the cells under the crop), decoded by `StoredLogits`."""

import math

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from boxseg.cells import Window, crop_coords, pool_logits, resample_cells, upsample_logits
from boxseg.data.boxes import boxes_from_mask
from boxseg.data.torchsets import AugmentSpec
from boxseg.data.transforms import Aligned, AugParams, apply, draw_params, window
from boxseg.store import InMemoryLogits
from boxseg.weak_targets import StoredLogits, WeakTrainSet
from tests.helpers.plain_path import resize_then_crop


def _scene(h=40, w=50):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8)
    mask[5:15, 30:44] = 1
    boxes, labels = boxes_from_mask(mask, 2, background=0)
    return Aligned(image, mask, boxes, labels)


def _red(x: Aligned) -> torch.Tensor:
    """Logits that are a pixel-exact function of the image: each channel its red value."""
    return torch.from_numpy(x.image[..., 0].astype(np.float32))[None].repeat(2, 1, 1)


class _Image:
    """A dataset of one image (W's masks are never read)."""

    def __init__(self, image: np.ndarray):
        self.image = image

    def read_image(self, split, image_id):
        return self.image


class _Drawn(AugmentSpec):
    """The augmentation `p`, whatever the generator."""

    def __init__(self, p: AugParams, crop: int):
        super().__init__(crop, (p.scale, p.scale))
        self.p = p

    def draw(self, rng, height, width):
        return self.p


def trainer_logits(
    image: np.ndarray,
    cells: torch.Tensor,
    stride: int,
    p: AugParams,
    crop: int,
    void: bool = False,
) -> torch.Tensor:
    """The crop's logits (K x crop x crop) as train-primary makes them from `cells` held at
    `stride` for `image`, with the augmentation `p`: the `WeakTrainSet` item (only the cells
    under the crop), decoded on the device by `StoredLogits` (`void`: void cells possible)."""
    source = InMemoryLogits({"x": cells}, [str(k) for k in range(len(cells))])
    source.stride, source.sizes = stride, np.array([image.shape[:2]], np.int32)
    aug = _Drawn(p, crop)
    w_set = WeakTrainSet(_Image(image), "train", ["x"], source, aug, (0, 0, 0), (1, 1, 1))
    return StoredLogits(void)(default_collate([w_set[(0, 0)]]))[0]


def crop_logits(cells: torch.Tensor, win: Window, stride: int = 1) -> torch.Tensor:
    """The reference decode: the crop window (flipped with it) resampled from all of an
    image's cells held at `stride`."""
    rows, cols = crop_coords(win, stride)
    rows, cols = torch.from_numpy(rows).float()[None], torch.from_numpy(cols).float()[None]
    cells = cells.float()[None]
    return resample_cells(cells, rows, cols, bool(torch.isnan(cells[:, :1]).any()))[0]


@pytest.mark.parametrize("flip", [False, True])
def test_crop_and_flip_keep_everything_aligned(flip):
    x = _scene()
    p = AugParams(1.0, top=3, left=18, flip=flip)
    out = apply(x, p, crop=32)
    logits = trainer_logits(x.image, _red(x), 1, p, 32)
    np.testing.assert_allclose(logits[0].numpy(), out.image[..., 0].astype(np.float32), atol=1e-3)
    b, _ = boxes_from_mask(out.mask, 2, background=0)
    np.testing.assert_array_equal(out.boxes, b)
    assert out.valid.all()


def test_scaled_logits_follow_the_image():
    x = _scene()
    p = AugParams(1.7, top=10, left=25, flip=True)
    out = apply(x, p, crop=32)
    logits = trainer_logits(x.image, _red(x), 1, p, 32)
    diff = np.abs(logits[0].numpy() - out.image[..., 0].astype(np.float32))
    assert diff.mean() < 1.0  # only interpolation rounding
    b, _ = boxes_from_mask(out.mask, 2, background=0)
    np.testing.assert_allclose(out.boxes, b, atol=1.0)


def test_padding_is_void_and_invalid():
    x = _scene(20, 20)
    p = AugParams(1.0, 0, 0, False)
    out = apply(x, p, crop=32)
    assert out.image.shape == (32, 32, 3)
    assert (out.mask[20:, :] == 255).all() and (out.mask[:, 20:] == 255).all()
    assert out.valid[:20, :20].all() and not out.valid[20:].any() and not out.valid[:, 20:].any()
    # logits on padding repeat the edge (those pixels are invalid: no target)
    logits = trainer_logits(x.image, _red(x), 1, p, 32)
    assert torch.equal(logits[:, 20:], logits[:, 19:20].expand(-1, 12, -1))


def test_draw_params_stay_inside():
    rng = np.random.default_rng(0)
    for _ in range(50):
        p = draw_params(rng, 40, 60, 32, (0.5, 2.0), True)
        h, w = round(40 * p.scale), round(60 * p.scale)
        assert 0 <= p.top <= max(h - 32, 0) and 0 <= p.left <= max(w - 32, 0)


def _smooth_logits(rng, k, h, w, void=False, every=6):
    """KxHxW logits that vary on an `every`-pixel scale (6: sharp enough to show resampling
    errors)."""
    size = (1, k, h // every + 1, w // every + 1)
    coarse = torch.from_numpy(rng.normal(0, 4, size).astype(np.float32))
    full = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear")[0]
    if void:
        full[:, : h // 3, : w // 2] = float("nan")
    return full


def test_crop_first_equals_resize_then_crop():
    """The crop-first path gives the resize-everything path: masks, valid maps and boxes
    exactly, the image up to one grey level (warp vs resize rounding), pixel logits to 1e-4."""
    rng = np.random.default_rng(0)
    for _ in range(60):
        h, w = (int(v) for v in rng.integers(20, 90, 2))
        x = _scene(h, w)
        logits = _smooth_logits(rng, 3, h, w)
        p = draw_params(rng, h, w, 32, (0.5, 2.0), True)  # includes crops needing padding
        a, (b, b_logits) = apply(x, p, 32), resize_then_crop(x, p, 32, logits)
        assert a.image.shape == b.image.shape == (32, 32, 3)
        assert np.abs(a.image.astype(int) - b.image.astype(int)).max() <= 1
        np.testing.assert_array_equal(a.mask, b.mask)
        np.testing.assert_array_equal(a.valid, b.valid)
        np.testing.assert_array_equal(a.boxes, b.boxes)
        valid = torch.from_numpy(b.valid)
        a_logits = trainer_logits(x.image, logits, 1, p, 32)
        torch.testing.assert_close(a_logits[:, valid], b_logits[:, valid], rtol=0, atol=1e-4)


@pytest.mark.parametrize("stride", [2, 4, 8])
def test_crop_first_from_stored_cells_is_as_faithful_as_the_full_resolution_path(stride):
    """Logits held at a store's stride, read only where the crop needs them and resampled
    once: nearly the old path's q (resample all to pixels, then to the scale), the same
    argmax on 97% of pixels, and at least as close to the logits before pooling."""
    rng = np.random.default_rng(stride)
    q_diff, moved, err_new, err_old = [], [], [], []
    for _ in range(40):
        h, w = (int(v) for v in rng.integers(40, 120, 2))
        net = _smooth_logits(rng, 4, h, w, every=16)
        cells = pool_logits(net, stride).half().float()
        p = draw_params(rng, h, w, 32, (0.5, 2.0), True)
        image = x_image(h, w)
        got = trainer_logits(image, cells, stride, p, 32)
        old, old_logits = resize_then_crop(
            Aligned(image), p, 32, upsample_logits(cells, stride, h, w)
        )
        want = resize_then_crop(Aligned(image), p, 32, net)[1]
        v = torch.from_numpy(old.valid)
        q, q_old, q_net = (x[:, v].softmax(0) for x in (got, old_logits, want))
        q_diff.append((q - q_old).abs().mean())
        moved.append((q.argmax(0) != q_old.argmax(0)).float().mean())
        err_new.append((q - q_net).abs().mean())
        err_old.append((q_old - q_net).abs().mean())
    assert torch.stack(q_diff).mean() < 0.01 and torch.stack(moved).mean() < 0.03
    assert torch.stack(err_new).mean() <= torch.stack(err_old).mean()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_weak_train_set_reads_only_the_cells_under_the_crop(seed):
    """The trainer's W set (`WeakTrainSet`) over a stride-4 store of a 2048x1024 image: a
    64-pixel crop at scale 1 reads about 64/4 cells a side, the cells under its window, and
    the item decodes (on the device, as `StoredLogits` does) to the full-resolution path's
    crop of all the cells."""
    rng = np.random.default_rng(seed)
    full = torch.from_numpy(rng.normal(size=(2, 256, 512)).astype(np.float32))
    store = InMemoryLogits({"big": full}, ["a", "b"])
    store.stride, store.sizes = 4, np.array([[1024, 2048]], np.int32)  # cells, not pixels
    reads = []
    real_read = store.read

    def read(i, rows=None, cols=None):
        reads.append((i, rows, cols))
        return real_read(i, rows, cols)

    store.read = read
    aug = AugmentSpec(64, (1.0, 1.0), hflip=True)
    big = _Image(np.zeros((1024, 2048, 3), np.uint8))  # 2048x1024, black
    ws = WeakTrainSet(big, "train", ["big"], store, aug, (0, 0, 0), (1, 1, 1))
    item = ws[(0, seed)]
    p = aug.draw(np.random.default_rng(seed), 1024, 2048)  # the item's own draw
    ((i, rows, cols),) = reads
    assert i == 0 and rows.stop - rows.start <= 64 // 4 + 2 and cols.stop - cols.start <= 18
    assert rows.start <= p.top // 4 and rows.stop >= math.ceil((p.top + 64) / 4)
    assert cols.start <= p.left // 4 and cols.stop >= math.ceil((p.left + 64) / 4)
    got = resample_cells(item["cells"][None].float(), item["rows"][None], item["cols"][None])
    want = crop_logits(full, window(1024, 2048, p, 64), 4)
    torch.testing.assert_close(got[0], want, rtol=0, atol=1e-5)


def test_crop_first_void_moves_by_at_most_a_pixel():
    """Void (NaN) cells: nearly the same q off the void, and the void's edge within a pixel
    of the old path's (which grows the void by a pixel: bilinear resampling spreads NaN)."""
    rng = np.random.default_rng(3)
    for _ in range(40):
        h, w = (int(v) for v in rng.integers(30, 90, 2))
        cells = pool_logits(_smooth_logits(rng, 3, h, w, True, 16), 4).half().float()
        p = draw_params(rng, h, w, 32, (0.5, 2.0), True)
        image = x_image(h, w)
        got = trainer_logits(image, cells, 4, p, 32, void=True)
        old, old_logits = resize_then_crop(Aligned(image), p, 32, upsample_logits(cells, 4, h, w))
        valid = torch.from_numpy(old.valid)  # (padding: zeros before, the edge repeated now)
        void_got, void_old = torch.isnan(got).any(0), torch.isnan(old_logits).any(0)
        near_edge = torch.nn.functional.max_pool2d(
            (void_old ^ torch.roll(void_old, 1, 0) | void_old ^ torch.roll(void_old, 1, 1))
            .float()[None], 5, 1, 2)[0].bool()  # fmt: skip
        assert not ((void_got ^ void_old) & ~near_edge & valid).any()
        both = ~void_got & ~void_old & valid
        diff = (got.softmax(0) - old_logits.softmax(0)).abs()[:, both]
        assert diff.numel() == 0 or diff.mean() < 0.02


def x_image(h: int, w: int) -> np.ndarray:
    return np.zeros((h, w, 3), np.uint8)
