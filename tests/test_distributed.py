"""torchrun on CPU (gloo): two ranks train, and write the same store as one process."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
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
