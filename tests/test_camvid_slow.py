"""The pipeline on the real CamVid copy in ../shared with a tiny budget (BOXSEG_SLOW=1)."""

import json
import os

import numpy as np
import pytest

from boxseg.io import read_label_png
from tests.conftest import SHARED_CAMVID, run_cli

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("BOXSEG_SLOW") != "1", reason="set BOXSEG_SLOW=1"),
    pytest.mark.skipif(not SHARED_CAMVID.is_dir(), reason="../shared/data/camvid not present"),
]


def test_camvid_pipeline(tmp_path, capsys):
    # F = 8 images, W = 40 of a 48-image sublist of train, so the run takes about a minute
    ids = (SHARED_CAMVID / "train.txt").read_text().split()[:48]
    full = tmp_path / "full.txt"
    full.write_text("\n".join(ids[:8]))
    data = tmp_path / "camvid"
    data.mkdir()
    for name in ("train", "trainannot", "val", "valannot"):
        (data / name).symlink_to(SHARED_CAMVID / name)
    (data / "train.txt").write_text("\n".join(ids))
    (data / "val.txt").write_text("\n".join((SHARED_CAMVID / "val.txt").read_text().split()[:10]))
    common = ["--full-list", full]
    tiny = [
        "--backbone",
        "resnet18",
        "--aspp-channels",
        "32",
        "--decoder-channels",
        "32",
        "--iters",
        "4",
        "--batch-size",
        "2",
        "--crop",
        "128",
        "--device",
        "cpu",
        "--quiet",
    ]
    steps = [
        ["train-anc", data, "--out", tmp_path / "anc", *common, *tiny],
        ["gen-logits", data, "--model", tmp_path / "anc/model.pt", "--out", tmp_path / "w.zarr",
         *common, "--quiet"],
        ["train-primary", data, "--out", tmp_path / "lin", "--logits", tmp_path / "w.zarr",
         "--self-corr", "linear", *common, *tiny],
        ["eval", data, "--model", tmp_path / "lin/model.pt", "--json", tmp_path / "r.json",
         "--quiet"],
    ]  # fmt: skip
    for args in steps:
        code, _, err = run_cli(args, capsys)
        assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    assert len(report["per_class_iou"]) == 11
    conf = np.array(report["confusion"], dtype=float)  # rows: truth, columns: prediction
    labelled = sum(int((read_label_png(data / "valannot" / f"{i}.png") < 11).sum())
                   for i in (data / "val.txt").read_text().split())  # fmt: skip
    assert conf.sum() == labelled  # every labelled val pixel scored once, void left out
    present = conf.sum(1) > 0
    tp, union = np.diag(conf), conf.sum(0) + conf.sum(1) - np.diag(conf)
    assert report["miou"] == pytest.approx(100 * (tp[present] / union[present]).mean())
    # the ancillary net with boxes (box-consistent decoding) is far above predicting the
    # majority class everywhere, even after 4 steps; a broken box path or decoding is not
    majority = 100 * conf.sum(1).max() / conf.sum() / present.sum()
    anc = [json.loads(x) for x in (tmp_path / "anc" / "metrics.jsonl").read_text().splitlines()]
    assert anc[-1]["val_miou"] > majority + 20, (anc[-1]["val_miou"], majority)
