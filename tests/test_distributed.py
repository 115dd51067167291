"""torchrun on CPU (gloo): two ranks train, and write the same store as one process."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist

from boxseg.store import LogitsStore
from tests.conftest import TINY_MODEL, TINY_TRAIN

pytestmark = pytest.mark.skipif(not dist.is_gloo_available(), reason="needs gloo")
ENV = os.environ | {"OMP_NUM_THREADS": "1"}  # what torchrun gives each rank
SPLIT = ["--num-full", "4"]


def torchrun(*args, nproc: int = 2) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", "-m", "boxseg", *map(str, args)]  # fmt: skip
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_two_ranks_train_anc_gen_logits_and_train_primary(tiny_data, tmp_path):
    torchrun("train-anc", tiny_data, "--out", tmp_path / "anc", *SPLIT, *TINY_MODEL, *TINY_TRAIN)
    config = json.loads((tmp_path / "anc" / "config.json").read_text())
    assert config["environment"]["world_size"] == 2
    records = [json.loads(x) for x in (tmp_path / "anc" / "metrics.jsonl").open()]
    assert [r["step"] for r in records if "loss" in r] == [3]  # rank 0 alone logs
    model = tmp_path / "anc" / "model.pt"

    # 8 W images in batches of 3: rank 0 takes the groups 0-2 and 3-5, rank 1 the group 6-7
    gen = ["gen-logits", tiny_data, "--model", model, *SPLIT, "--batch-size", "3", "--device",
           "cpu", "--quiet"]  # fmt: skip
    torchrun(*gen, "--out", tmp_path / "two.zarr")
    subprocess.run([sys.executable, "-m", "boxseg", *map(str, gen), "--out", tmp_path / "one.zarr"],
                   env=ENV, check=True, timeout=120)  # fmt: skip
    two, one = LogitsStore.open(tmp_path / "two.zarr"), LogitsStore.open(tmp_path / "one.zarr")
    assert two.done_mask().all() and two.image_ids == one.image_ids
    np.testing.assert_array_equal(two.logits[:], one.logits[:])  # element for element

    common = [*SPLIT, *TINY_MODEL, *TINY_TRAIN]
    torchrun("train-primary", tiny_data, "--out", tmp_path / "lin", "--logits",
             tmp_path / "two.zarr", "--self-corr", "linear", *common)  # fmt: skip
    torchrun("train-primary", tiny_data, "--out", tmp_path / "conv", "--anc-model", model,
             "--self-corr", "conv", "--conv-warmup", "1", "--allow-full-anc", *common)  # fmt: skip
    for run in ("lin", "conv"):
        assert (tmp_path / run / "model.pt").is_file()
        config = json.loads((tmp_path / run / "config.json").read_text())
        assert config["environment"]["world_size"] == 2
    check_conv_two_ranks_like_one(tiny_data, tmp_path, model, common)


def _params(state: dict) -> torch.Tensor:
    return torch.cat([v.flatten().float() for k, v in sorted(state.items())
                      if v.is_floating_point() and "running" not in k])  # fmt: skip


def _conv_run(data, out, anc, args) -> dict:
    """A one-process conv run; returns its model.pt."""
    subprocess.run([sys.executable, "-m", "boxseg", "train-primary", *map(str, [
        data, "--out", out, "--anc-model", anc, "--self-corr", "conv", "--conv-warmup", "1",
        "--allow-full-anc", *args])], env=ENV, check=True, timeout=300)  # fmt: skip
    return torch.load(out / "model.pt", weights_only=False)


def check_conv_two_ranks_like_one(data, tmp_path, anc, common) -> None:
    """Two ranks of batch 2 see, step by step, the images one process of batch 4 sees (the
    epoch's permutation interleaved over the ranks, the same augmentation seeds) and average
    their gradients. So: the same schedule (steps, stage 2, alpha, merger), and a merger g
    (no BatchNorm) that ends much closer to the one-process run's than a run on other data
    does. (The primary nets differ by their BatchNorm statistics over 2 vs 4 images, which at
    this size dominate a 4-step run, so their weights are not compared.)"""
    one = list(common)
    one[one.index("--batch-size") + 1] = "4"
    m1 = _conv_run(data, tmp_path / "conv1", anc, one)
    other = _conv_run(data, tmp_path / "conv_other", anc, [*one, "--seed-split", "1"])
    c1, c2 = (json.loads((tmp_path / r / "config.json").read_text()) for r in ("conv1", "conv"))
    for key in ("iters", "w_steps", "stage2_steps", "conv", "alpha", "weak_loss_scale"):
        assert c1[key] == c2[key], key
    m2 = torch.load(tmp_path / "conv" / "model.pt", weights_only=False)
    g1, g2, g3 = (_params(m["merger_state_dict"]) for m in (m1, m2, other))
    assert (g2 - g1).norm() < 0.5 * (g3 - g1).norm(), (float((g2 - g1).norm()),
                                                        float((g3 - g1).norm()))  # fmt: skip


def test_two_ranks_train_smp_nets(tiny_data, tmp_path):
    """An smp ancillary net (the box encoder on the features UNet reads, the box tensor into
    the head) and an smp primary train under DDP: DDP fails a step on a parameter without a
    gradient, so this also proves the box path leaves none unused."""
    smp = ["--arch", "unet", "--encoder", "resnet18", *SPLIT, *TINY_TRAIN]
    torchrun("train-anc", tiny_data, "--out", tmp_path / "anc", *smp)
    anc = tmp_path / "anc" / "model.pt"
    torchrun("train-primary", tiny_data, "--out", tmp_path / "p", "--anc-model", anc, *smp)
    for run in ("anc", "p"):
        ckpt = torch.load(tmp_path / run / "model.pt", weights_only=True)
        assert (ckpt["model"]["arch"], ckpt["model"]["backbone"]) == ("unet", "resnet18")
        config = json.loads((tmp_path / run / "config.json").read_text())
        assert config["environment"]["world_size"] == 2
