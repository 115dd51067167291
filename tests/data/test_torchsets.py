import numpy as np
import pytest
import torch

from boxseg.data.formats import open_dataset
from boxseg.data.torchsets import AugmentSpec, WeakTrainSet
from boxseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD, Aligned, resize_then_crop
from boxseg.store import LogitsStore


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
        red = (item["image"][0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]) * 255
        diff = (item["logits"][0] * 10 - red).abs()[item["valid"]]
        assert item["logits"].shape == (5, 24, 24) and item["valid"].any()
        # stride 1: only interpolation rounding; stride 2: block means of a noisy image
        assert diff.mean() < tol
        flipped = (item["logits"][0].flip(-1) * 10 - red).abs()[item["valid"]]
        assert flipped.mean() > diff.mean()  # a misaligned (flipped) map would be caught


@pytest.mark.parametrize("stride", [1, 4])
def test_weak_items_equal_the_resize_everything_path(tiny_data, tmp_path, stride):
    """A W item (crop first: only the store cells under the crop are read) equals what the
    plain path gives from `read_full` and `resize_then_crop` with the same draw."""
    ds = open_dataset(tiny_data)
    ids = ds.ids("train")[:3]
    sizes = np.array([ds.read_image("train", i).shape[:2] for i in ids])
    store = LogitsStore.create(tmp_path / "w.zarr", ids, sizes, list(ds.class_names), stride, {})
    gen = torch.Generator().manual_seed(0)
    for j, (h, w) in enumerate(sizes):
        coarse = torch.randn(1, ds.num_classes, h // 5 + 1, w // 5 + 1, generator=gen) * 4
        store.write(j, torch.nn.functional.interpolate(coarse, size=(int(h), int(w)))[0])
    aug = AugmentSpec(24, (0.5, 2.0), hflip=True)
    weak = WeakTrainSet(ds, "train", ids, str(tmp_path / "w.zarr"), aug, (0, 0, 0), (1, 1, 1))
    for key in [(j, seed) for j in range(3) for seed in range(4)]:
        item = weak[key]
        image = ds.read_image("train", ids[key[0]])
        p = aug.draw(np.random.default_rng(key[1]), *image.shape[:2])
        old = resize_then_crop(Aligned(image, logits=store.read_full(key[0])), p, 24)
        torch.testing.assert_close(item["logits"], old.logits, rtol=0, atol=2e-4)
        assert torch.equal(item["valid"], torch.from_numpy(old.valid))
        assert (
            item["image"] * 255 - torch.from_numpy(old.image).permute(2, 0, 1)
        ).abs().max() < 1.01
