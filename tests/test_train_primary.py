"""train-primary's composition: per-image loss weighting, self-training targets, fair conv."""

import json
import math
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from boxseg.box_constraint import BoxConstraint
from boxseg.checkpoint import read_checkpoint
from boxseg.data.boxes import BoxSpec
from boxseg.data.sample import VOID
from boxseg.data.split import SplitSpec
from boxseg.engine import TrainConfig
from boxseg.errors import BoxsegError
from boxseg.gen_logits import GenLogitsOptions, gen_logits
from boxseg.models import ModelSpec
from boxseg.primary_options import CorrectionOptions, LossOptions, PrimaryOptions, WeakOptions
from boxseg.store import LogitsStore
from boxseg.train_anc import AncOptions, train_anc
from boxseg.train_primary import train_primary
from tests.conftest import TINY_MODEL, TINY_TRAIN, run_cli

SPEC = ModelSpec("resnet18", 16, 16, 16, 8)
SPLIT = SplitSpec("train", 4, 0)


def test_larger_weak_batch_scales_the_logged_loss(pipeline, tmp_path):
    cfg = TrainConfig(iters=2, batch_size=2, crop=32, device="cpu", log_every=1)
    weak = WeakOptions(logits=str(pipeline["store"]), batch_size=4)
    train_primary(
        PrimaryOptions(pipeline["data"], tmp_path / "p", SPLIT, SPEC, cfg, weak, val_split=None),
        quiet=True,
    )
    config = json.loads((tmp_path / "p" / "config.json").read_text())
    assert config["weak_loss_scale"] == 2.0
    for line in (tmp_path / "p" / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        assert r["loss"] == pytest.approx(r["loss_f"] + 2.0 * r["loss_w"], rel=1e-5)


def test_w_weighs_by_the_batches_delivered(pipeline, tmp_path, capsys):
    """3 F images and --batch-size 8: each step takes 3 F and 8 W images (9 W), so the W term
    is scaled 8/3 (not 8/8): the logged loss is loss_f + 8/3 loss_w; config.json records the
    delivered sizes beside the requested ones, and a warning says F is short."""
    cfg = TrainConfig(iters=2, batch_size=8, crop=32, device="cpu", log_every=1)
    split, weak = SplitSpec("train", 3, 0), WeakOptions(anc_model=pipeline["anc"])
    train_primary(
        PrimaryOptions(pipeline["data"], tmp_path / "p", split, SPEC, cfg, weak, val_split=None),
        quiet=True,
    )
    err = capsys.readouterr().err
    assert "boxseg: warning: F has 3 images, fewer than --batch-size 8: each step takes 3 F" in err
    assert "W has" not in err  # 9 W images fill a batch of 8
    config = json.loads((tmp_path / "p" / "config.json").read_text())
    assert (config["batch_size"], config["batch_size_requested"]) == (3, 8)
    assert (config["weak_batch_size"], config["weak_batch_size_requested"]) == (8, 8)
    assert config["weak_loss_scale"] == pytest.approx(8 / 3)
    lines = (tmp_path / "p" / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(x) for x in lines]
    assert [r["step"] for r in records] == [1, 2]
    for r in records:
        assert r["loss_w"] > 0.01  # the two weights would give visibly different losses
        assert r["loss"] == pytest.approx(r["loss_f"] + 8 / 3 * r["loss_w"], rel=1e-5)


@pytest.fixture(scope="module")
def f_only(pipeline, tmp_path_factory):
    out = tmp_path_factory.mktemp("f_only") / "run"
    cfg = TrainConfig(iters=3, batch_size=2, crop=32, device="cpu")
    train_primary(PrimaryOptions(pipeline["data"], out, SPLIT, SPEC, cfg, val_split=None), True)
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
    self_zarr = str(tmp_path / "self.zarr")
    own = GenLogitsOptions(pipeline["data"], self_zarr, SPLIT, f_only, device="cpu")
    store = gen_logits(own, quiet=True)
    boxed = replace(own, out=str(tmp_path / "anc.zarr"), model_path=pipeline["anc"])
    with pytest.raises(AssertionError, match="W mask"):  # the patch does stop a boxed run
        gen_logits(boxed, quiet=True)
    monkeypatch.undo()
    assert store.attrs["method"] == "primary" and store.attrs["box_constraint"] is None
    anc_store = LogitsStore.open(pipeline["store"])
    assert store.image_ids == anc_store.image_ids and store.done_mask().all()
    assert not np.array_equal(store.logits[:], anc_store.logits[:])
    cfg = TrainConfig(iters=2, batch_size=2, crop=32, device="cpu")
    weak = WeakOptions(logits=str(tmp_path / "self.zarr"))
    r = train_primary(
        PrimaryOptions(pipeline["data"], tmp_path / "st", SPLIT, SPEC, cfg, weak), quiet=True
    )
    assert "miou" in r


def half_f(data: Path, out: Path, cfg: TrainConfig) -> AncOptions:
    """An ancillary run on half of SPLIT's F (the conv recipe's stage 1), no val score."""
    return AncOptions(data, out, SPLIT, SPEC, cfg, BoxSpec(4), full_fraction=0.5, val_split=None)


def test_ancillary_records_what_it_was_trained_on(tiny_data, tmp_path):
    cfg = TrainConfig(iters=1, batch_size=2, crop=32, device="cpu")
    train_anc(half_f(tiny_data, tmp_path / "half", cfg), quiet=True)
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
    train_anc(half_f(pipeline["data"], tmp_path / "half", cfg), quiet=True)
    half = PrimaryOptions(
        pipeline["data"],
        tmp_path / "c",
        SPLIT,
        SPEC,
        cfg,
        WeakOptions(anc_model=tmp_path / "half" / "model.pt"),
        CorrectionOptions("conv", conv_hidden=8),
        val_split=None,
    )
    train_primary(half, quiet=True)
    config = json.loads((tmp_path / "c" / "config.json").read_text())
    assert config["anc_trained_on"]["full_fraction"] == 0.5
    full = replace(half, out=tmp_path / "c2", weak=WeakOptions(anc_model=pipeline["anc"]))
    with pytest.raises(BoxsegError, match="--allow-full-anc"):
        train_primary(full, quiet=True)


def test_hard_pixels_are_checked_and_recorded(pipeline, tmp_path, capsys):
    """--hard-pixels outside (0, 1] is one line; a run records the fraction it trained with."""
    code, _, err = run_cli(["train-primary", pipeline["data"], "--out", tmp_path / "bad",
                            "--hard-pixels", "0", *TINY_MODEL, *TINY_TRAIN], capsys)  # fmt: skip
    assert code == 2 and "--hard-pixels 0.0: must be in (0, 1]" in err
    assert len(err.strip().splitlines()) == 1
    cfg = TrainConfig(iters=2, batch_size=2, crop=32, device="cpu", log_every=1)
    weak, losses = WeakOptions(logits=str(pipeline["store"])), LossOptions(hard_pixels=0.25)
    opts = PrimaryOptions(pipeline["data"], tmp_path / "p", SPLIT, SPEC, cfg, weak, losses=losses)
    train_primary(replace(opts, val_split=None), quiet=True)
    config = json.loads((tmp_path / "p" / "config.json").read_text())
    assert config["hard_pixels"] == 0.25


def test_hard_pixels_average_the_hardest_quarter(pipeline, tmp_path, monkeypatch):
    """The trainer's own objective and first batch: at --hard-pixels 0.25 each term is the mean
    of the top 25% of its valid pixels' losses (computed here directly), larger than the plain
    mean the same objective gives at 1.0."""
    import dataclasses

    import boxseg.train_primary as tp
    from boxseg.weak_targets import without_void

    seen = {}

    def capture(nets, objective, next_batch, *a, **k):
        seen.update(nets=nets, objective=objective, batch=next_batch(0))
        return {"seconds": 0.0, "img_per_s": 0.0}

    monkeypatch.setattr(tp, "fit", capture)
    cfg = TrainConfig(iters=2, batch_size=2, crop=32, device="cpu")
    weak, losses = WeakOptions(logits=str(pipeline["store"])), LossOptions(hard_pixels=0.25)
    opts = PrimaryOptions(pipeline["data"], tmp_path / "p", SPLIT, SPEC, cfg, weak, losses=losses)
    train_primary(replace(opts, val_split=None), quiet=True)
    nets, batch, hard = seen["nets"].eval(), seen["batch"], seen["objective"]
    assert hard.hard_pixels == 0.25
    f, w = batch["f"], batch["w"]
    with torch.no_grad():
        _, logs_hard, _ = hard(nets, batch, 0)
        _, logs_all, _ = dataclasses.replace(hard, hard_pixels=1.0)(nets, batch, 0)
        out = nets["primary"](torch.cat([f["image"], w["image"]]))
        nf = f["image"].shape[0]
        valid_f = f["mask"] != VOID
        target = f["mask"].masked_fill(~valid_f, 0)
        ce_f = torch.nn.functional.cross_entropy(out[:nf], target, reduction="none")[valid_f]
        l_anc, valid_w = without_void(hard.weak_logits(w), w["valid"])
        q = torch.softmax(l_anc, 1)
        ce_w = -(q * torch.log_softmax(out[nf:], 1)).sum(1)[valid_w]

    def top_quarter(x):
        return x.topk(math.ceil(0.25 * x.numel())).values.mean()

    for name, ce in (("loss_f", ce_f), ("loss_w", ce_w)):
        torch.testing.assert_close(logs_hard[name], top_quarter(ce), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(logs_all[name], ce.mean(), rtol=1e-5, atol=1e-6)
        assert logs_hard[name] > logs_all[name] + 0.01, name


def test_conv_judges_the_ancillary_net_by_the_f_images_it_saw(pipeline, tmp_path, capsys):
    """The README's conv recipe (`boxseg split`, train-anc on full_half.txt, conv on full.txt)
    is accepted; a net that trained on half of a bigger F, which still holds every image of
    this run's F, is refused; model.pt records the ids and config.json how many it saw."""
    data, lists = pipeline["data"], tmp_path / "lists"
    code, _, err = run_cli(["split", data, "--num-full", "8", "--seed-split", "0", "--out",
                            lists], capsys)  # fmt: skip
    assert code == 0, err
    half = (lists / "full_half.txt").read_text().split()
    run_anc = ["train-anc", data, *TINY_MODEL, *TINY_TRAIN, "--box-min-area", "4"]
    code, _, err = run_cli([*run_anc, "--out", tmp_path / "a_half", "--full-list",
                            lists / "full_half.txt"], capsys)  # fmt: skip
    assert code == 0, err
    trained_on = read_checkpoint(tmp_path / "a_half" / "model.pt")["trained_on"]
    assert trained_on["ids"] == sorted(half) and trained_on["full_fraction"] == 1.0
    conv = ["train-primary", data, *TINY_MODEL, *TINY_TRAIN, "--self-corr", "conv",
            "--conv-hidden", "8", "--full-list", lists / "full.txt"]  # fmt: skip
    code, _, err = run_cli([*conv, "--out", tmp_path / "c", "--anc-model",
                            tmp_path / "a_half" / "model.pt"], capsys)  # fmt: skip
    assert code == 0, err
    config = json.loads((tmp_path / "c" / "config.json").read_text())
    assert config["anc_trained_on"]["f_images_seen"] == len(half)
    assert "ids" not in config["anc_trained_on"]
    # half of a 8-image F covers the 4-image F of a run whose F is that half
    code, _, err = run_cli([*run_anc, "--out", tmp_path / "a_big", "--num-full", "8",
                            "--full-fraction", "0.5"], capsys)  # fmt: skip
    assert code == 0, err
    seen = read_checkpoint(tmp_path / "a_big" / "model.pt")["trained_on"]["ids"]
    (tmp_path / "seen.txt").write_text("\n".join(seen) + "\n")
    code, _, err = run_cli([*conv[:-2], "--full-list", tmp_path / "seen.txt", "--out",
                            tmp_path / "c2", "--anc-model", tmp_path / "a_big" / "model.pt"],
                           capsys)  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "trained on all of F" in err and f"{len(seen)} F images" in err


def test_conv_falls_back_to_the_fraction_for_checkpoints_without_ids():
    from boxseg.train_primary import check_anc_for_conv

    old = {"trained_on": {"full_fraction": 0.5, "num_images": 2}}
    check_anc_for_conv(old, "anc.pt", ["a", "b", "c"])  # accepted, as before
    with pytest.raises(BoxsegError, match="does not say"):
        check_anc_for_conv({}, "anc.pt", ["a"])
    check_anc_for_conv({"trained_on": {"ids": ["a"], "full_fraction": 1.0}}, "anc.pt", ["a", "b"])
    with pytest.raises(BoxsegError, match="trained on all of F"):
        check_anc_for_conv({"trained_on": {"ids": ["a", "b", "c"]}}, "anc.pt", ["a", "b"])


def test_a_store_run_refuses_box_rule_options_and_records_the_stores_rule(
    pipeline, tmp_path, capsys
):
    """--no-box-constraint / --box-prior would be ignored with --logits alone (the store's
    rule applies): refused in one line; config.json records the rule W's targets follow."""
    base = ["train-primary", pipeline["data"], "--logits", pipeline["store"], "--num-full", "4",
            *TINY_MODEL, *TINY_TRAIN]  # fmt: skip
    for flags in (["--no-box-constraint"], ["--box-prior", "2"]):
        code, _, err = run_cli([*base, "--out", tmp_path / "bad", *flags], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert flags[0].replace("--no-", "--") in err and "store's own box rule" in err
        assert not (tmp_path / "bad").exists()
    with pytest.raises(BoxsegError, match="not used without --anc-model"):
        from boxseg.box_constraint import BoxConstraint

        cfg = TrainConfig(iters=1, batch_size=2, crop=32, device="cpu")
        weak = WeakOptions(logits=str(pipeline["store"]), constraint=BoxConstraint(True, 2.0))
        train_primary(
            PrimaryOptions(pipeline["data"], tmp_path / "api", SPLIT, SPEC, cfg, weak), quiet=True
        )
    code, _, err = run_cli([*base, "--out", tmp_path / "store"], capsys)
    assert code == 0, err
    recorded = json.loads((tmp_path / "store" / "config.json").read_text())["box_constraint"]
    store = LogitsStore.open(pipeline["store"])
    assert recorded == {"rule": store.rule.to_dict(), "option": store.attrs["box_constraint"]}
    assert recorded["option"] == {"enabled": True, "prior": 0.0}
    # a box rule's store applies a rule too (boxes painted, the net's rule for readers)
    box = tmp_path / "box.zarr"
    code, _, err = run_cli(["gen-logits", pipeline["data"], "--method", "box", "--out", box,
                            "--num-full", "4", "--quiet"], capsys)  # fmt: skip
    assert code == 0, err
    code, _, err = run_cli([*base[:3], box, *base[4:], "--out", tmp_path / "boxrun"], capsys)
    assert code == 0, err
    recorded = json.loads((tmp_path / "boxrun" / "config.json").read_text())["box_constraint"]
    assert recorded == {"rule": LogitsStore.open(box).rule.to_dict(), "option": None}
    assert recorded["rule"] is not None
    online = [
        "train-primary",
        pipeline["data"],
        "--anc-model",
        pipeline["anc"],
        "--num-full",
        "4",
        *TINY_MODEL,
        *TINY_TRAIN,
        "--box-prior",
        "2",
        "--out",
        tmp_path / "online",
    ]
    code, _, err = run_cli(online, capsys)
    assert code == 0, err
    config = json.loads((tmp_path / "online" / "config.json").read_text())
    assert config["box_constraint"]["option"] == {"enabled": True, "prior": 2.0}
    assert config["box_constraint"]["rule"]["prior"] == 2.0
    f_only = ["train-primary", pipeline["data"], "--num-full", "4", *TINY_MODEL, *TINY_TRAIN]
    code, _, err = run_cli([*f_only, "--out", tmp_path / "f", "--box-prior", "2"], capsys)
    assert code == 2 and "--box-prior: not used without --anc-model" in err


CONFIG_KEYS = """command data split num_full num_weak weak_source logits anc_model self_corr
anc_trained_on alpha conv weak_weight batch_size batch_size_requested weak_batch_size
weak_batch_size_requested weak_loss_scale model pretrained pretrained_loaded class_weights
box_constraint train iters w_steps stage2_steps weak_boxes hard_pixels environment""".split()


def test_config_json_records_every_option_under_the_keys_runs_always_had(pipeline, tmp_path):
    """config.json, written from the PrimaryOptions value, keeps the keys (and their order)
    that scripts and earlier runs read, and holds each non-default option's value."""
    from boxseg.box_losses import WeakBoxLoss

    cfg = TrainConfig(iters=2, batch_size=2, crop=32, device="cpu", seed=3, lr=0.02)
    weak = WeakOptions(
        logits=str(pipeline["store"]),
        anc_model=pipeline["anc"],
        weight=0.5,
        batch_size=3,
        boxes=WeakBoxLoss(True, 0.5),
    )
    correction = CorrectionOptions("conv", 20.0, 2.0, 0.7, 8, 1, True, allow_full_anc=True)
    losses = LossOptions(class_weights="median-freq", hard_pixels=0.5)
    opts = PrimaryOptions(pipeline["data"], tmp_path / "c", SPLIT, SPEC, cfg, weak, correction)
    train_primary(replace(opts, losses=losses, val_split=None), quiet=True)
    config = json.loads((tmp_path / "c" / "config.json").read_text())
    assert list(config) == CONFIG_KEYS
    assert (config["split"], config["model"]) == (SPLIT.to_dict(), SPEC.to_dict())
    assert config["train"] == cfg.to_dict() and config["pretrained"] == "none"
    assert (config["logits"], config["anc_model"]) == (str(pipeline["store"]), str(weak.anc_model))
    assert config["self_corr"] == "conv" and config["weak_source"] == "store"
    assert config["alpha"] == {"start": 20.0, "end": 2.0, "decay_fraction": 0.7}
    assert config["conv"] == {"hidden": 8, "warmup": 1, "grad_to_primary": True}
    assert (config["iters"], config["w_steps"], config["stage2_steps"]) == (3, 2, 1)
    assert (config["weak_weight"], config["weak_batch_size_requested"]) == (0.5, 3)
    assert config["weak_boxes"] == WeakBoxLoss(True, 0.5).to_dict()
    assert config["class_weights"]["option"] == "median-freq"
    assert len(config["class_weights"]["values"]) == 5 and config["hard_pixels"] == 0.5
    store = LogitsStore.open(pipeline["store"])
    assert config["box_constraint"] == {
        "rule": store.rule.to_dict(),
        "option": store.attrs["box_constraint"],
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"train": TrainConfig(iters=0)}, "--iters 0: must be at least 1"),
        ({"correction": CorrectionOptions("cubic")}, "--self-corr cubic: choose from none"),
        ({"correction": CorrectionOptions("linear", 1.0, 2.0)}, "need 0 < alpha-end <="),
        ({"weak": WeakOptions(weight=-1.0)}, "--weak-weight -1.0: must be >= 0"),
        ({"weak": WeakOptions(batch_size=0)}, "--weak-batch-size 0: must be at least 1"),
        ({"losses": LossOptions(hard_pixels=0.0)}, "--hard-pixels 0.0: must be in"),
        ({"correction": CorrectionOptions("conv")}, "--self-corr conv needs --anc-model"),
        ({"weak": WeakOptions("w.zarr", Path("a.pt"))}, "not both (both only with conv)"),
        ({"weak": WeakOptions(constraint=BoxConstraint(False))}, "not used without --anc-model"),
    ],
)
def test_options_refuse_what_cannot_work_before_any_file_is_read(change, message, tmp_path):
    """validate() holds the one-line refusals: a run with them reads no data (there is none)
    and writes no run directory."""
    opts = PrimaryOptions(tmp_path / "no-data", tmp_path / "run", SPLIT, SPEC, TrainConfig())
    opts.validate()
    with pytest.raises(BoxsegError, match=re.escape(message)):
        train_primary(replace(opts, **change), quiet=True)
    assert not (tmp_path / "run").exists()
