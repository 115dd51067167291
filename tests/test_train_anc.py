import json
import re
from dataclasses import replace

import pytest

import boxseg.train_anc as ta
from boxseg.box_losses import WeakBoxLoss
from boxseg.checkpoint import read_checkpoint
from boxseg.data.box_noise import BoxNoise
from boxseg.data.boxes import BoxSpec
from boxseg.data.split import SplitSpec
from boxseg.engine import TrainConfig
from boxseg.errors import BoxsegError
from boxseg.models import BoxPathSpec, ModelSpec
from tests.conftest import TINY_MODEL, TINY_TRAIN, run_cli


def test_box_noise_is_an_option_recorded_in_model_and_config(
    tiny_data, tmp_path, capsys, monkeypatch
):
    """train-anc --box-noise reaches the F items the net trains on, and is recorded."""
    from boxseg.data import torchsets

    calls = []
    real = torchsets.noisy_boxes
    monkeypatch.setattr(
        torchsets, "noisy_boxes", lambda *a, **k: calls.append(a[4]) or real(*a, **k)
    )
    base = ["train-anc", tiny_data, "--num-full", "4", *TINY_MODEL, *TINY_TRAIN]
    code, _, err = run_cli([*base, "--out", tmp_path / "a", "--box-noise", "mixed"], capsys)
    assert code == 0, err
    noise = {"shift": 0.1, "grow": 0.1, "drop": 0.1, "flip": 0.0}
    assert calls and all(c.to_dict() == noise for c in calls)  # every F item drew noise
    calls.clear()
    code, _, err = run_cli([*base, "--out", tmp_path / "off"], capsys)
    assert code == 0 and not calls
    assert read_checkpoint(tmp_path / "a" / "model.pt")["box_noise"] == noise
    assert json.loads((tmp_path / "a" / "config.json").read_text())["box_noise"] == noise
    code, _, err = run_cli([*base, "--out", tmp_path / "b", "--box-noise", "shift=0.7"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "shift=0.7" in err
    assert not (tmp_path / "b").exists()


def test_the_cli_passes_one_options_value_that_config_json_records(
    tiny_data, tmp_path, capsys, monkeypatch
):
    """Every train-anc flag lands in its field of AncOptions, and config.json holds each part
    of that value, in the keys (and order) runs have always written."""
    seen = []
    real = ta.train_anc
    monkeypatch.setattr(ta, "train_anc", lambda opts, quiet: seen.append(opts) or real(opts, quiet))
    flags = (
        "--num-full 4 --box-min-area 8 --box-classes disc,square --box-resize nearest "
        "--no-box-direct --box-noise shift10 --full-fraction 0.5 --class-weights none "
        "--box-constraint-loss --weak-boxes --weak-box-weight 0.5 --weak-batch-size 2 --skip-bad"
    ).split()
    out = tmp_path / "a"
    args = ["train-anc", tiny_data, "--out", out, *TINY_MODEL, *TINY_TRAIN, *flags]
    code, _, err = run_cli([*args, "--val-split", ""], capsys)
    assert code == 0, err
    expected = ta.AncOptions(
        tiny_data,
        out,
        SplitSpec("train", 4, 0),
        ModelSpec("resnet18", 16, 16, 16),
        TrainConfig(iters=3, batch_size=2, crop=32, device="cpu"),
        boxes=BoxSpec(8, (1, 2)),
        box_path=BoxPathSpec("nearest", False),
        box_noise=BoxNoise(shift=0.1),
        full_fraction=0.5,
        class_weights="none",
        constraint_loss=True,
        weak_boxes=WeakBoxLoss(True, 0.5),
        weak_batch_size=2,
        val_split=None,
        skip_bad=True,
    )
    assert seen == [expected]
    config = json.loads((out / "config.json").read_text())
    keys = (
        "command data split num_full num_weak boxes model box_path constraint_loss box_noise "
        "weak_boxes class_weights pretrained pretrained_loaded train iters environment"
    )
    assert list(config) == keys.split()
    parts = ("split", "boxes", "model", "box_path", "box_noise", "train")
    assert {k: config[k] for k in parts} == {k: getattr(expected, k).to_dict() for k in parts}
    found = {"num_images": 8, "batch_size": 2}  # W's images, and the batch size delivered
    assert config["weak_boxes"] == expected.weak_boxes.to_dict() | found
    assert config["class_weights"] == {"option": "none", "values": None}
    assert config["constraint_loss"] is True and config["pretrained"] == "none"
    assert (config["num_full"], config["num_weak"], config["iters"]) == (2, 8, 3)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"box_path": BoxPathSpec("bilinear")}, "--box-resize bilinear: choose max or nearest"),
        ({"weak_batch_size": 1}, "--weak-batch-size 1: must be at least 2"),
        ({"train": TrainConfig(lr=0.0)}, "--lr 0.0: must be positive"),
        ({"weak_boxes": WeakBoxLoss(True, -1.0)}, "--weak-box-weight -1.0: must be >= 0"),
    ],
)
def test_options_that_cannot_work_are_refused_before_anything_is_read(tmp_path, change, message):
    """validate() runs first: the option is named, not the missing dataset, and no run
    directory is made."""
    split, spec = SplitSpec("train", 4, 0), ModelSpec("resnet18")
    opts = ta.AncOptions(tmp_path / "no-data", tmp_path / "run", split, spec, TrainConfig())
    with pytest.raises(BoxsegError, match=re.escape(message)):
        ta.train_anc(replace(opts, **change), quiet=True)
    assert not (tmp_path / "run").exists()
