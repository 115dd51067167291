import numpy as np
import pytest
import torch

from boxseg.data.formats import open_dataset
from boxseg.data.torchsets import AugmentSpec, WeakTrainSet
from boxseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
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
