import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from boxseg.data.formats import open_dataset
from boxseg.data.torchsets import AugmentSpec
from boxseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD, Aligned
from boxseg.store import LogitsStore
from boxseg.weak_targets import StoredLogits, WeakTrainSet
from tests.helpers.plain_path import resize_then_crop


@pytest.mark.parametrize("stride, tol", [(1, 0.6), (2, 25.0)])
def test_weak_items_keep_logits_aligned_with_their_image(tiny_data, tmp_path, stride, tol):
    """Store logits that equal the image's red channel; after augmentation they must still."""
    ds = open_dataset(tiny_data)
    ids = ds.ids("train")[:4]
    sizes = np.array([ds.read_image("train", i).shape[:2] for i in ids])
    store = LogitsStore.create(tmp_path / "w.zarr", ids, sizes, list(ds.class_names), stride, {})
    for j, image_id in enumerate(ids):
        red = torch.from_numpy(ds.read_image("train", image_id)[..., 0].astype(np.float32))
        store.write(j, red[None].repeat(ds.num_classes, 1, 1) / 10)  # float16-friendly range
    aug = AugmentSpec(24, (0.8, 1.5), hflip=True)
    weak = WeakTrainSet(
        ds, "train", ids, str(tmp_path / "w.zarr"), aug, IMAGENET_MEAN, IMAGENET_STD
    )
    torch.manual_seed(0)
    for k in range(12):
        item = weak[k % 4]
        logits = pixels(item)
        red = (item["image"][0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]) * 255
        diff = (logits[0] * 10 - red).abs()[item["valid"]]
        assert logits.shape == (5, 24, 24) and item["valid"].any()
        # stride 1: only interpolation rounding; stride 2: block means of a noisy image
        assert diff.mean() < tol
        flipped = (logits[0].flip(-1) * 10 - red).abs()[item["valid"]]
        assert flipped.mean() > diff.mean()  # a misaligned (flipped) map would be caught


def pixels(item: dict, void: bool = True) -> torch.Tensor:
    """A W item's logits at pixel resolution, as train-primary makes them on its device."""
    return StoredLogits(void)(default_collate([item]))[0]


@pytest.mark.parametrize("stride", [1, 4])
def test_weak_items_equal_the_resize_everything_path(tiny_data, tmp_path, stride):
    """A W item (crop first: only the store cells under the crop are read, resampled once,
    on the device) gives what the plain path gave (`read_full`, then `resize_then_crop`,
    tests/helpers/plain_path.py, with the same draw): for stride 1 the same logits; for
    stride 4 one bilinear resampling instead of two, so the same q up to interpolation (mean
    difference under 0.005), the same argmax on 97% of pixels, and q at least as close to the
    net's own logits before pooling (the old path's second resampling blurs peaks the cells
    still hold)."""
    ds = open_dataset(tiny_data)
    ids = ds.ids("train")[:3]
    sizes = np.array([ds.read_image("train", i).shape[:2] for i in ids])
    store = LogitsStore.create(tmp_path / "w.zarr", ids, sizes, list(ds.class_names), stride, {})
    gen = torch.Generator().manual_seed(0)
    truth = []
    for j, (h, w) in enumerate(sizes):
        coarse = torch.randn(1, ds.num_classes, h // 8 + 1, w // 8 + 1, generator=gen) * 4
        size = (int(h), int(w))  # logits varying over a few cells, as a net's do
        truth.append(torch.nn.functional.interpolate(coarse, size=size, mode="bilinear")[0])
        store.write(j, truth[-1])
    aug = AugmentSpec(24, (0.5, 2.0), hflip=True)
    weak = WeakTrainSet(ds, "train", ids, str(tmp_path / "w.zarr"), aug, (0, 0, 0), (1, 1, 1))
    q_diff, moved, err_new, err_old = [], [], [], []
    for key in [(j, seed) for j in range(3) for seed in range(6)]:
        item = weak[key]
        image = ds.read_image("train", ids[key[0]])
        p = aug.draw(np.random.default_rng(key[1]), *image.shape[:2])
        old, old_logits = resize_then_crop(Aligned(image), p, 24, store.read_full(key[0]))
        valid = torch.from_numpy(old.valid)
        assert torch.equal(item["valid"], valid)
        old_image = torch.from_numpy(old.image).permute(2, 0, 1).float()
        assert (item["image"] * 255 - old_image).abs().max() < 1.01
        got, want = pixels(item, void=False)[:, valid], old_logits[:, valid]
        if stride == 1:
            torch.testing.assert_close(got, want, rtol=0, atol=2e-4)
        net = resize_then_crop(Aligned(image), p, 24, truth[key[0]])[1][:, valid]
        q, q_old, q_net = got.softmax(0), want.softmax(0), net.softmax(0)
        q_diff.append((q - q_old).abs().mean())
        moved.append((got.argmax(0) != want.argmax(0)).float().mean())
        err_new.append((q - q_net).abs().mean())
        err_old.append((q_old - q_net).abs().mean())
    assert torch.stack(q_diff).mean() < 0.005 and torch.stack(moved).mean() < 0.03
    assert torch.stack(err_new).mean() <= torch.stack(err_old).mean() + 1e-6


def test_box_noise_changes_only_the_boxes_and_is_seeded_per_draw(tiny_data):
    """F's boxes made imprecise (train-anc --box-noise): the crop, its image and mask are those
    of the same draw without noise; the box tensor differs; the same key gives the same
    boxes, another key other boxes."""
    from boxseg.data.box_noise import BoxNoise
    from boxseg.data.boxes import BoxSpec
    from boxseg.data.torchsets import FullTrainSet

    ds = open_dataset(tiny_data)
    ids = ds.ids("train")[:4]
    aug = AugmentSpec(24, (0.8, 1.2))

    def fset(noise):
        return FullTrainSet(ds, "train", ids, BoxSpec(4), aug, True, IMAGENET_MEAN,
                            IMAGENET_STD, box_noise=noise)  # fmt: skip

    exact = fset(None)
    noisy = fset(BoxNoise(shift=0.25, grow=0.2, drop=0.3))
    differs = 0
    for key in [(i, 1000 + i) for i in range(4)]:
        a, b = exact[key], noisy[key]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
        differs += not torch.equal(a["boxes"], b["boxes"])
        assert torch.equal(noisy[key]["boxes"], b["boxes"])
    assert differs >= 3
    other = [not torch.equal(noisy[(i, 1)]["boxes"], noisy[(i, 2)]["boxes"]) for i in range(4)]
    assert sum(other) >= 3
