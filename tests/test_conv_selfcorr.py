"""Convolutional self-correction and the online ancillary mode."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from boxseg.checkpoint import load_model, read_checkpoint
from boxseg.data.boxes import BoxSpec
from boxseg.data.formats import open_dataset
from boxseg.data.sampling import mixed
from boxseg.data.split import SplitSpec, fraction_of
from boxseg.engine import TrainConfig
from boxseg.losses import soft_cross_entropy
from boxseg.models import ModelSpec
from boxseg.primary_options import CorrectionOptions, PrimaryOptions, WeakOptions
from boxseg.selfcorr import ConvMerger, soft_target
from boxseg.store import LogitsStore
from boxseg.train_primary import train_primary
from tests.conftest import TINY_MODEL, TINY_TRAIN, run_cli

BOUND = 0.028  # mean |q_online - q_stored|: stored 0.020, a 2-pixel shift 0.036


def test_merger_shape_and_unclamped_output():
    g = ConvMerger(num_classes=4, hidden=16)
    assert isinstance(g.net[-1], nn.Conv2d)  # no activation or norm after the last conv
    out = g(torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8))
    assert out.shape == (2, 4, 8, 8)
    assert (out < 0).any() and (out > 0).any()


def test_weak_term_neither_updates_g_nor_flows_through_q():
    torch.manual_seed(0)
    g = ConvMerger(3, 8)
    out_w = torch.randn(2, 3, 5, 5, requires_grad=True)
    q = soft_target(torch.randn(2, 3, 5, 5), out_w, "conv", merger=g)
    assert not q.requires_grad
    soft_cross_entropy(out_w, q).backward()
    assert all(p.grad is None for p in g.parameters())  # the W term never updates g
    # stop-gradient: d loss / d logits is exactly softmax(l) - q (no path through q)
    expected = (torch.softmax(out_w, 1) - q) / (2 * 5 * 5)
    torch.testing.assert_close(out_w.grad, expected.detach())


def test_stage_three_starts_only_after_warmup():
    next_batch = mixed(lambda s: ("f", s), lambda s: ("w", s), weak_from=4)
    ws = [next_batch(step)["w"] for step in range(6)]
    assert ws[:4] == [None] * 4 and ws[4:] == [("w", 4), ("w", 5)]
    assert next_batch(2) == {"f": ("f", 2), "w": None}  # a resumed run asks by step


def test_full_fraction_is_half_and_deterministic():
    ids = [f"i{k}" for k in range(10)]
    half = fraction_of(ids, 0.5, 0)
    assert len(half) == 5 and half == fraction_of(ids, 0.5, 0) and set(half) <= set(ids)


def test_conv_training_records_stages_and_keeps_g(pipeline, tmp_path):
    run = tmp_path / "conv"
    cfg = TrainConfig(iters=6, batch_size=2, crop=32, device="cpu", log_every=1)
    spec = ModelSpec("resnet18", 16, 16, 16, 8)
    weak = WeakOptions(logits=str(pipeline["store"]), anc_model=pipeline["anc"])
    conv = CorrectionOptions("conv", conv_hidden=8, conv_warmup=2, allow_full_anc=True)
    split = SplitSpec("train", 4, 0)
    train_primary(PrimaryOptions(pipeline["data"], run, split, spec, cfg, weak, conv), quiet=True)
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    stages = [x["stage"] for x in lines if "stage" in x]
    assert stages == [2, 2, 3, 3, 3, 3, 3, 3]  # stage 2 on top of the 6 steps with W
    config = json.loads((run / "config.json").read_text())
    assert (config["iters"], config["w_steps"], config["stage2_steps"]) == (8, 6, 2)
    assert all("loss_w" not in x for x in lines if x.get("stage") == 2)
    assert all("loss_w" in x and "loss_g" in x for x in lines if x.get("stage") == 3)
    ckpt = read_checkpoint(run / "model.pt")
    assert ckpt["self_corr"] == "conv" and ckpt["merger_state_dict"]["net.0.weight"].shape[:2] == (
        8,
        10,
    )
    model, meta = load_model(run / "model.pt", kind="primary")  # eval uses the primary net only
    assert model.box_encoder is None


def test_conv_cli_needs_anc_model(pipeline, tmp_path, capsys):
    code, _, err = run_cli(["train-primary", pipeline["data"], "--out", tmp_path / "c",
                            "--logits", pipeline["store"], "--self-corr", "conv", "--num-full", "4",
                            *TINY_MODEL, *TINY_TRAIN], capsys)  # fmt: skip
    assert code == 2 and "--anc-model" in err


def ruled_out(w: dict, rule) -> torch.Tensor:
    """N x K x H x W: where no box of a boxed class covers the original pixel a crop pixel
    shows (that class may not be there), from the batch's boxes and source rows / columns."""
    n, h, wd = w["valid"].shape
    out = torch.ones(n, rule.num_classes, h, wd, dtype=torch.bool)
    out[:, list(rule.free)] = False
    for i in range(n):
        r, c = w["src_rows"][i][:, None], w["src_cols"][i][None, :]
        for (x1, y1, x2, y2), k in zip(w["box_bounds"][i].tolist(), w["box_labels"][i].tolist(),
                                       strict=True):  # fmt: skip
            if k >= 0:
                inside = (r >= y1) & (r < y2) & (c >= x1) & (c < x2) & (r >= 0) & (c >= 0)
                out[i, k] &= ~inside
    return out


def test_online_mode_trains_on_constrained_targets(pipeline, tmp_path, capsys, monkeypatch):
    """The online ancillary net's targets q: W's loss is logged (finite, non-zero) and q puts
    ~0 probability on a class where no box of it lies."""
    from boxseg import losses
    from boxseg.box_constraint import BoxConstraint, rule_of

    seen = []
    real_call, real_ce = losses.Objective.__call__, losses.soft_cross_entropy

    def call(self, nets, batch, step):
        seen.append({"w": batch["w"]})
        return real_call(self, nets, batch, step)

    def soft_ce(logits, q, *a, **k):
        seen[-1]["q"] = q
        return real_ce(logits, q, *a, **k)

    monkeypatch.setattr(losses.Objective, "__call__", call)
    monkeypatch.setattr(losses, "soft_cross_entropy", soft_ce)
    code, _, err = run_cli(["train-primary", pipeline["data"], "--out", tmp_path / "o",
                            "--anc-model", pipeline["anc"], "--self-corr", "linear",
                            "--num-full", "4", *TINY_MODEL, *TINY_TRAIN], capsys)  # fmt: skip
    assert code == 0, err
    config = json.loads((tmp_path / "o" / "config.json").read_text())
    assert config["weak_source"] == "online"
    lines = [json.loads(x) for x in (tmp_path / "o" / "metrics.jsonl").read_text().splitlines()]
    losses_w = [x["loss_w"] for x in lines if "loss_w" in x]
    assert losses_w and all(np.isfinite(v) and v > 0.01 for v in losses_w), lines
    rule = rule_of(read_checkpoint(pipeline["anc"]), BoxConstraint())
    assert len(seen) == 3 and all("q" in x for x in seen)
    for x in seen:
        banned = ruled_out(x["w"], rule)
        assert banned.float().mean() > 0.1  # the constraint is in play on these crops
        assert x["q"][banned].max() < 1e-6
        assert x["q"][~banned].max() > 0.1


@pytest.fixture(scope="module")
def trained_anc(tiny_data, tmp_path_factory):
    """An ancillary net trained long enough to draw shapes (the pipeline's 3-step net is still
    nearly flat, so any shift would pass), and its store."""
    from boxseg.gen_logits import GenLogitsOptions, gen_logits
    from boxseg.train_anc import AncOptions, train_anc

    root = tmp_path_factory.mktemp("trained_anc")
    cfg = TrainConfig(iters=60, batch_size=4, crop=32, lr=3e-3, optimizer="adamw", device="cpu")
    split, spec = SplitSpec("train", 4, 0), ModelSpec("resnet18", 16, 16, 16, 8)
    anc = AncOptions(tiny_data, root / "anc", split, spec, cfg, boxes=BoxSpec(4), val_split=None)
    train_anc(anc, quiet=True)
    anc_model, store = anc.out / "model.pt", str(root / "w.zarr")
    gen_logits(GenLogitsOptions(tiny_data, store, split, anc_model, device="cpu"), quiet=True)
    return root / "anc" / "model.pt", root / "w.zarr"


def test_online_q_equals_stored_q_up_to_storage_error(tiny_data, trained_anc):
    """On the same (identity-transformed) image, q from the online ancillary net (its box
    constraint made by the online W set, as train-primary does) and q from the (constrained)
    store differ only by float16 and stride-4 resampling: less than a 2-pixel shift of the
    same q would make them differ."""
    from boxseg.box_constraint import BoxConstraint, rule_of
    from boxseg.data.sampling import collate
    from boxseg.data.torchsets import AugmentSpec
    from boxseg.weak_targets import OnlineAncillary, OnlineWeakTrainSet, constrained

    model, meta = load_model(trained_anc[0], kind="ancillary")
    ds = open_dataset(tiny_data)
    store = LogitsStore.open(trained_anc[1])
    identity = AugmentSpec(32, (1.0, 1.0), hflip=False)
    online_set = OnlineWeakTrainSet(ds, "train", store.image_ids, BoxSpec.from_dict(meta["boxes"]),
                                    identity, meta["mean"], meta["std"])  # fmt: skip
    rule = rule_of(meta, BoxConstraint())
    source = constrained(OnlineAncillary(model), rule)
    errors, shifted, agree, ruled_out = [], [], [], []
    for i in range(len(store.image_ids)):
        batch = collate([online_set[(i, 0)]])
        online = source(batch)
        q_online = soft_target(online)
        q_stored = soft_target(store.read_full(i)[None])
        errors.append((q_online - q_stored).abs().mean().item())
        moved = torch.roll(q_online, shifts=(2, 2), dims=(2, 3))
        shifted.append((q_online - moved).abs().mean().item())
        agree.append((q_online.argmax(1) == q_stored.argmax(1)).float().mean().item())
        ruled_out.append((online < -1e3).float().mean().item())
    print(f"stored {np.mean(errors):.4f}, 2-pixel shift {np.mean(shifted):.4f}")
    assert np.mean(errors) < BOUND < np.mean(shifted), (errors, shifted)
    assert np.mean(agree) > 0.9, agree
    assert np.mean(ruled_out) > 0.1  # the constraint is in play on these images


def test_conv_refuses_a_store_from_another_ancillary_model(pipeline, tmp_path, capsys):
    import shutil

    store = tmp_path / "w.zarr"
    shutil.copytree(pipeline["store"], store)
    LogitsStore.open(store, mode="r+").group.attrs["checkpoint_sha256"] = "0" * 64
    code, _, err = run_cli(
        [
            "train-primary",
            pipeline["data"],
            "--out",
            tmp_path / "c",
            "--logits",
            store,
            "--anc-model",
            pipeline["anc"],
            "--self-corr",
            "conv",
            "--allow-full-anc",
            "--num-full",
            "4",
            *TINY_MODEL,
            *TINY_TRAIN,
        ],
        capsys,
    )
    assert code == 2 and "another ancillary model" in err


def test_conv_refuses_a_store_made_under_another_box_constraint(pipeline, tmp_path, capsys):
    """conv's g learns on F's (constrained) ancillary logits and corrects W's stored ones: both
    must be made under the same rule."""
    code, _, err = run_cli(["train-primary", pipeline["data"], "--out", tmp_path / "c",
                            "--logits", pipeline["store"], "--anc-model", pipeline["anc"],
                            "--self-corr", "conv", "--no-box-constraint", "--num-full", "4",
                            "--allow-full-anc",
                            *TINY_MODEL, *TINY_TRAIN], capsys)  # fmt: skip
    assert code == 2 and "box constraint" in err and "--box-constraint" in err
