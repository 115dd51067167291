"""Shared fixtures: a tiny generated dataset and a CLI runner that runs in-process."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from boxseg.data.synthetic import write_synthetic

os.environ["BOXSEG_QUIET"] = "1"
if os.environ.get("PYTEST_XDIST_WORKER"):  # `pytest -n N`: each worker a share of the cores
    # (N one-thread processes train faster than one N-thread process: benchmarks/threads_bench.py)
    _workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    _threads = str(max(1, (os.cpu_count() or 1) // _workers))
    os.environ["OMP_NUM_THREADS"] = _threads  # also for the subprocesses tests start
    import torch

    torch.set_num_threads(int(_threads))
SHARED_CAMVID = Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid"

# Small, fast model and training flags for CLI tests.
TINY_MODEL = ["--backbone", "resnet18", "--aspp-channels", "16", "--decoder-channels", "16"]
TINY_TRAIN = ["--iters", "3", "--batch-size", "2", "--crop", "32", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """12 train / 4 val images of 32x32 in the segnet layout."""
    return write_synthetic(tmp_path_factory.mktemp("data") / "syn", 12, 4, size=32, seed=1)


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """Run `boxseg ARGS` in this process; return (exit code, stdout, stderr)."""
    from boxseg import cli

    cli._debug["on"] = False
    old = sys.argv
    sys.argv = ["boxseg", *map(str, args)]
    code = 0
    try:
        cli.main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = old
    out, err = capsys.readouterr() if capsys is not None else ("", "")
    return code, out, err


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory, tiny_data) -> dict[str, Path]:
    """train-anc + gen-logits once for the session (tiny budget); paths of what they wrote."""
    from boxseg.data.boxes import BoxSpec
    from boxseg.data.split import SplitSpec
    from boxseg.engine import TrainConfig
    from boxseg.gen_logits import GenLogitsOptions, gen_logits
    from boxseg.models import ModelSpec
    from boxseg.train_anc import AncOptions, train_anc

    root = tmp_path_factory.mktemp("pipeline")
    spec = ModelSpec("resnet18", 16, 16, 16, 8)
    cfg = TrainConfig(iters=3, batch_size=2, crop=32, device="cpu")
    split = SplitSpec("train", 4, 0)
    train_anc(AncOptions(tiny_data, root / "anc", split, spec, cfg, boxes=BoxSpec(4)), quiet=True)
    anc_model, store = root / "anc" / "model.pt", str(root / "weak.zarr")
    gen_logits(GenLogitsOptions(tiny_data, store, split, anc_model, device="cpu"), quiet=True)
    return {"data": tiny_data, "anc": root / "anc" / "model.pt", "store": root / "weak.zarr"}


def pytest_collection_modifyitems(config, items):
    """Tests marked slow run only with BOXSEG_SLOW=1."""
    if os.environ.get("BOXSEG_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: set BOXSEG_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def cli_pipeline(root: Path, tmp_path: Path, capsys) -> dict:
    """train-anc -> gen-logits -> train-primary (linear) through the CLI on a tiny budget;
    returns the ancillary run's config.json."""
    common = [*TINY_MODEL, *TINY_TRAIN]
    code, _, err = run_cli(["train-anc", root, "--out", tmp_path / "a", *common], capsys)
    assert code == 0, err
    code, _, err = run_cli(["gen-logits", root, "--model", tmp_path / "a" / "model.pt", "--out",
                            tmp_path / "w.zarr", "--device", "cpu", "--quiet"], capsys)  # fmt: skip
    assert code == 0, err
    store = tmp_path / "w.zarr"
    code, _, err = run_cli(["train-primary", root, "--out", tmp_path / "p", "--logits", store,
                            "--self-corr", "linear", *common], capsys)  # fmt: skip
    assert code == 0, err
    return json.loads((tmp_path / "a" / "config.json").read_text())
