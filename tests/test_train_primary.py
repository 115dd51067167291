"""train-primary's composition: per-image loss weighting, self-training targets, fair conv."""

import json

import numpy as np
import pytest
import torch

from boxseg.checkpoint import read_checkpoint
from boxseg.data.boxes import BoxSpec
from boxseg.data.split import SplitSpec
from boxseg.engine import TrainConfig
from boxseg.errors import BoxsegError
from boxseg.gen_logits import gen_logits
from boxseg.models import ModelSpec
from boxseg.store import LogitsStore
from boxseg.train_anc import train_anc
from boxseg.train_primary import train_primary, weak_loss_scale
from tests.conftest import TINY_MODEL, TINY_TRAIN, run_cli

SPEC = ModelSpec("resnet18", 16, 16, 16, 8)
SPLIT = SplitSpec("train", 4, 0)


def test_weak_term_is_weighted_per_image():
    """mean_F + scale * mean_W equals the paper's per-image sum over F and W divided by n_F."""
    f, w = torch.rand(2), torch.rand(6)
    paper = (f.sum() + w.sum()) / len(f)
    torch.testing.assert_close(f.mean() + weak_loss_scale(1.0, 2, 6) * w.mean(), paper)
    assert weak_loss_scale(0.5, 4, 4) == 0.5


def test_larger_weak_batch_scales_the_logged_loss(pipeline, tmp_path):
    cfg = TrainConfig(iters=2, batch_size=2, crop=32, device="cpu", log_every=1)
    train_primary(pipeline["data"], tmp_path / "p", SPLIT, SPEC, cfg,
                  logits=str(pipeline["store"]), weak_batch_size=4, val_split=None,
                  quiet=True)  # fmt: skip
    config = json.loads((tmp_path / "p" / "config.json").read_text())
    assert config["weak_loss_scale"] == 2.0
    for line in (tmp_path / "p" / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        assert r["loss"] == pytest.approx(r["loss_f"] + 2.0 * r["loss_w"], rel=1e-5)


@pytest.fixture(scope="module")
def f_only(pipeline, tmp_path_factory):
    out = tmp_path_factory.mktemp("f_only") / "run"
    cfg = TrainConfig(iters=3, batch_size=2, crop=32, device="cpu")
    train_primary(pipeline["data"], out, SPLIT, SPEC, cfg, val_split=None, quiet=True)
    return out / "model.pt"


def test_self_training_store_from_a_primary_model_reads_no_mask(pipeline, f_only, tmp_path,
                                                              monkeypatch):  # fmt: skip
    """gen-logits --model PRIMARY writes that net's own logits for W (no boxes, no masks), and
    train-primary takes the store like any other."""
    from boxseg.data import formats

    def no_masks(*a, **k):
        raise AssertionError("a W mask was read")

    monkeypatch.setattr(formats.SegnetDataset, "read_boxes", no_masks, raising=False)
    monkeypatch.setattr(formats.SegnetDataset, "read_mask", no_masks, raising=False)
    store = gen_logits(pipeline["data"], f_only, str(tmp_path / "self.zarr"), SPLIT,
                       device="cpu", quiet=True)  # fmt: skip
    with pytest.raises(AssertionError, match="W mask"):  # the patch does stop a boxed run
        gen_logits(pipeline["data"], pipeline["anc"], str(tmp_path / "anc.zarr"), SPLIT,
                   device="cpu", quiet=True)  # fmt: skip
    monkeypatch.undo()
    assert store.attrs["method"] == "primary" and store.attrs["box_constraint"] is None
    anc_store = LogitsStore.open(pipeline["store"])
    assert store.image_ids == anc_store.image_ids and store.done_mask().all()
    assert not np.array_equal(store.logits[:], anc_store.logits[:])
    r = train_primary(pipeline["data"], tmp_path / "st", SPLIT, SPEC,
                      TrainConfig(iters=2, batch_size=2, crop=32, device="cpu"),
                      logits=str(tmp_path / "self.zarr"), quiet=True)  # fmt: skip
    assert "miou" in r


def test_ancillary_records_what_it_was_trained_on(tiny_data, tmp_path):
    cfg = TrainConfig(iters=1, batch_size=2, crop=32, device="cpu")
    train_anc(tiny_data, tmp_path / "half", SPLIT, BoxSpec(4), SPEC, cfg, val_split=None,
              quiet=True, full_fraction=0.5)  # fmt: skip
    trained_on = read_checkpoint(tmp_path / "half" / "model.pt")["trained_on"]
    assert trained_on["full_fraction"] == 0.5 and trained_on["num_images"] == 2
    assert trained_on["num_full"] == 4 and trained_on["split"] == SPLIT.to_dict()


def test_conv_refuses_an_ancillary_net_trained_on_all_of_f(pipeline, tmp_path, capsys):
    args = ["train-primary", pipeline["data"], "--out", tmp_path / "c", "--logits",
            pipeline["store"], "--anc-model", pipeline["anc"], "--self-corr", "conv",
            "--num-full", "4", *TINY_MODEL, *TINY_TRAIN]  # fmt: skip
    code, _, err = run_cli(args, capsys)
    assert code == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert "trained on all of F" in err and "--allow-full-anc" in err
    assert str(pipeline["anc"]) in err
    code, _, err = run_cli([*args, "--allow-full-anc"], capsys)
    assert code == 0, err


def test_conv_accepts_a_half_f_ancillary_net(pipeline, tmp_path):
    cfg = TrainConfig(iters=2, batch_size=2, crop=32, device="cpu")
    train_anc(pipeline["data"], tmp_path / "half", SPLIT, BoxSpec(4), SPEC, cfg, val_split=None,
              quiet=True, full_fraction=0.5)  # fmt: skip
    train_primary(pipeline["data"], tmp_path / "c", SPLIT, SPEC, cfg,
                  anc_model=tmp_path / "half" / "model.pt", self_corr="conv", conv_hidden=8,
                  val_split=None, quiet=True)  # fmt: skip
    config = json.loads((tmp_path / "c" / "config.json").read_text())
    assert config["anc_trained_on"]["full_fraction"] == 0.5
    with pytest.raises(BoxsegError, match="--allow-full-anc"):
        train_primary(
            pipeline["data"],
            tmp_path / "c2",
            SPLIT,
            SPEC,
            cfg,
            anc_model=pipeline["anc"],
            self_corr="conv",
            val_split=None,
            quiet=True,
        )


def test_hard_pixels_are_checked_and_recorded(pipeline, tmp_path, capsys):
    """--hard-pixels outside (0, 1] is one line; a run records the fraction it trained with."""
    code, _, err = run_cli(["train-primary", pipeline["data"], "--out", tmp_path / "bad",
                            "--hard-pixels", "0", *TINY_MODEL, *TINY_TRAIN], capsys)  # fmt: skip
    assert code == 2 and "--hard-pixels 0.0: must be in (0, 1]" in err
    assert len(err.strip().splitlines()) == 1
    cfg = TrainConfig(iters=2, batch_size=2, crop=32, device="cpu", log_every=1)
    train_primary(pipeline["data"], tmp_path / "p", SPLIT, SPEC, cfg,
                  logits=str(pipeline["store"]), val_split=None, quiet=True,
                  hard_pixels=0.25)  # fmt: skip
    config = json.loads((tmp_path / "p" / "config.json").read_text())
    assert config["hard_pixels"] == 0.25
