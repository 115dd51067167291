"""The Cityscapes reader on a tiny tree with Cityscapes' file naming, labelIds and instanceIds."""

import cv2
import numpy as np

from boxseg.data.boxes import BoxSpec
from boxseg.data.cityscapes import CityscapesDataset
from boxseg.data.formats import load_full, open_dataset
from boxseg.data.sample import VOID
from boxseg.data.split import SplitSpec, split_dataset
from boxseg.io import write_image


def write_cityscapes(root, cities=("aachen", "bochum"), per_city=2, split="train"):
    for city in cities:
        (root / "leftImg8bit" / split / city).mkdir(parents=True, exist_ok=True)
        (root / "gtFine" / split / city).mkdir(parents=True, exist_ok=True)
        for k in range(per_city):
            stem = f"{city}_{k:06d}_000019"
            write_image(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png",
                        np.full((32, 64, 3), 90, np.uint8))  # fmt: skip
            label = np.full((32, 64), 7, np.uint8)  # road
            label[:8] = 23  # sky
            label[0, :] = 0  # unlabeled -> void
            label[10:20, 5:15] = 26  # car 1
            label[10:20, 30:40] = 26  # car 2
            label[12:30, 50:54] = 24  # a person
            inst = label.astype(np.uint16)
            inst[10:20, 5:15] = 26001
            inst[10:20, 30:40] = 26002
            inst[12:30, 50:54] = 24000
            gt = root / "gtFine" / split / city / stem
            cv2.imwrite(f"{gt}_gtFine_labelIds.png", label)
            cv2.imwrite(f"{gt}_gtFine_instanceIds.png", inst)
    return root


def test_reader_maps_label_ids_and_boxes_things_by_instance(tmp_path):
    root = write_cityscapes(tmp_path / "cs")
    ds = open_dataset(root)
    assert isinstance(ds, CityscapesDataset) and ds.num_classes == 19
    ids = ds.ids("train")
    assert ids == ["aachen/aachen_000000_000019", "aachen/aachen_000001_000019",
                   "bochum/bochum_000000_000019", "bochum/bochum_000001_000019"]  # fmt: skip
    s = load_full(ds, "train", ids[0], BoxSpec(min_area=4))
    assert s.mask[20, 30] == 0 and s.mask[5, 5] == 10 and s.mask[15, 8] == 13  # road, sky, car
    assert s.mask[0, 0] == VOID and s.mask[20, 51] == 11  # unlabeled, person
    boxes = {(int(l), tuple(int(v) for v in b)) for b, l in zip(s.boxes, s.labels, strict=True)}
    assert (13, (5, 10, 15, 20)) in boxes and (13, (30, 10, 40, 20)) in boxes  # two cars
    assert (11, (50, 12, 54, 30)) in boxes  # the person (a crowd-free id 24000 instance)
    assert (10, (0, 1, 64, 8)) in boxes  # sky: one stuff component
    assert sum(1 for label, _ in boxes if label == 13) == 2


def test_split_is_deterministic_over_city_folders(tmp_path):
    ds = open_dataset(write_cityscapes(tmp_path / "cs"))
    a = split_dataset(ds, SplitSpec("train", 2, 5))
    assert a == split_dataset(ds, SplitSpec("train", 2, 5)) and len(a[0]) == 2 and len(a[1]) == 2
