"""Class weights (class_weights.py) and the losses that use them."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from boxseg.class_weights import (
    class_pixel_counts,
    median_frequency,
    read_weights_file,
    resolve_class_weights,
)
from boxseg.data.formats import open_dataset
from boxseg.data.sample import VOID
from boxseg.errors import BoxsegError
from boxseg.losses import hard_cross_entropy, soft_cross_entropy
from tests.conftest import TINY_MODEL, TINY_TRAIN, run_cli


def test_median_frequency_by_hand():
    """Two 2x2 masks (void ignored). Class 0: 3 pixels in images of 4+3 labelled pixels;
    class 1: 2 of 4; class 2: 2 of 3; class 3 absent."""
    a = np.array([[0, 0], [1, 1]], np.uint8)
    b = np.array([[0, 2], [2, VOID]], np.uint8)
    pixels, present = class_pixel_counts([a, b], 4)
    assert pixels.tolist() == [3, 2, 2, 0] and present.tolist() == [7, 4, 3, 0]
    f = np.array([3 / 7, 2 / 4, 2 / 3])
    med = np.median(f)  # 0.5
    expected = [med / f[0], med / f[1], med / f[2], 1.0]  # 7/6, 1, 3/4, absent -> 1
    np.testing.assert_allclose(median_frequency(pixels, present), expected, rtol=1e-6)
    np.testing.assert_allclose(expected[:3], [7 / 6, 1.0, 0.75])


def test_weighted_soft_ce_of_one_hot_targets_is_torchs_weighted_ce():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, 5)
    mask = torch.randint(0, 3, (2, 5, 5))
    mask[0, 0] = VOID
    w = torch.tensor([0.5, 2.0, 1.0])
    ref = F.cross_entropy(logits, mask, weight=w, ignore_index=VOID)
    hard, all_void = hard_cross_entropy(logits, mask, w)
    torch.testing.assert_close(hard, ref)
    assert all_void.item() == 0
    onehot = F.one_hot(mask.clamp_max(2), 3).permute(0, 3, 1, 2).float()
    soft = soft_cross_entropy(logits, onehot, mask != VOID, w)
    torch.testing.assert_close(soft, ref)


def test_all_void_batch_gives_zero_loss_not_nan():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    loss, all_void = hard_cross_entropy(logits, torch.full((2, 4, 4), VOID), torch.ones(3))
    assert loss.item() == 0.0 and all_void.item() == 1.0
    loss.backward()
    assert torch.isfinite(logits.grad).all() and (logits.grad == 0).all()


def test_weights_file_formats_and_errors(tmp_path):
    names = ("sky", "road", "car")
    f = tmp_path / "w.txt"
    f.write_text("1\n0.5\n3\n")
    assert read_weights_file(f, names).tolist() == [1.0, 0.5, 3.0]
    f.write_text("car 3\nsky 1\nroad 0.5\n")
    assert read_weights_file(f, names).tolist() == [1.0, 0.5, 3.0]
    cases = (("1 2", "2 values"), ("1 x 2", "not a number"), ("1 -1 2", ">= 0"),
             ("car 3\nsky 1\nbus 2", "unknown class 'bus'"))  # fmt: skip
    for text, message in cases:
        f.write_text(text)
        with pytest.raises(BoxsegError, match=message):
            read_weights_file(f, names)


def test_median_freq_counts_f_only(tiny_data):
    ds = open_dataset(tiny_data)
    ids = ds.ids("train")[:3]
    w = resolve_class_weights("median-freq", ds, "train", ids)
    masks = [ds.read_mask("train", i) for i in ids]
    np.testing.assert_allclose(w.numpy(), median_frequency(*class_pixel_counts(masks, 5)))
    assert resolve_class_weights("none", ds, "train", ids) is None
    with pytest.raises(BoxsegError, match="--class-weights nope"):
        resolve_class_weights("nope", ds, "train", ids)


def test_all_void_f_images_train_without_nan(tiny_data, tmp_path, capsys):
    """F whose masks are all void: every F batch is skipped (counted in metrics.jsonl) and both
    trainers finish with finite losses."""
    import shutil

    from boxseg.io import read_label_png, write_label_png

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    for p in (data / "trainannot").glob("*.png"):
        write_label_png(p, np.full_like(read_label_png(p), 255))
    for cmd in ("train-anc", "train-primary"):
        code, _, err = run_cli([cmd, data, "--out", tmp_path / cmd, "--num-full", "4",
                                "--class-weights", "median-freq", "--val-split", "",
                                *TINY_MODEL, *TINY_TRAIN], capsys)  # fmt: skip
        assert code == 0, err
        lines = [json.loads(x) for x in (tmp_path / cmd / "metrics.jsonl").read_text().splitlines()]
        assert lines[-1]["skipped_f"] == 3  # the 3 steps, all skipped
        assert all(np.isfinite(x["loss"]) for x in lines)
