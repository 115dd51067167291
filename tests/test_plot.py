"""`boxseg plot`: curves of real (tiny) runs and an eval's confusion matrix, as PNG files."""

import json

import cv2
import numpy as np

from boxseg.data.split import SplitSpec
from boxseg.engine import TrainConfig
from boxseg.models import ModelSpec
from boxseg.primary_options import CorrectionOptions, PrimaryOptions, WeakOptions
from boxseg.train_primary import train_primary
from tests.conftest import run_cli


def _panels(png) -> int:
    """Count the plot panels of a PNG: runs of columns that hold the panels' dark frames."""
    image = cv2.imread(str(png), cv2.IMREAD_GRAYSCALE)
    frame_cols = (image < 80).mean(0) > 0.5  # a panel's left and right frame lines
    edges = np.flatnonzero(np.diff(frame_cols.astype(int)) == 1)
    return len(edges) // 2


def test_curves_of_two_runs_on_shared_axes(pipeline, tmp_path, capsys):
    spec = ModelSpec("resnet18", 16, 16, 16, 8)
    runs = []
    for k, mode in enumerate(("none", "linear")):
        cfg = TrainConfig(iters=4, batch_size=2, crop=32, device="cpu", log_every=1, seed=k)
        weak, correction = WeakOptions(logits=str(pipeline["store"])), CorrectionOptions(mode)
        split = SplitSpec("train", 4, 0)
        opts = PrimaryOptions(pipeline["data"], tmp_path / mode, split, spec, cfg, weak, correction)
        train_primary(opts, quiet=True)
        runs.append(tmp_path / mode)
    code, out, err = run_cli(["plot", *runs, "--out", tmp_path / "curves.png"], capsys)
    assert code == 0, err
    image = cv2.imread(str(tmp_path / "curves.png"))
    assert image is not None and image.shape[1] > 2.5 * image.shape[0]  # three panels a row
    assert _panels(tmp_path / "curves.png") == 3  # loss, learning rate, val mIoU
    # without a val record: two panels
    for run in runs:
        lines = (run / "metrics.jsonl").read_text().splitlines()
        kept = [x for x in lines if "val_miou" not in x]
        (run / "metrics.jsonl").write_text("\n".join(kept) + "\n")
    code, _, err = run_cli(["plot", runs[0], "--out", tmp_path / "c2.png"], capsys)
    assert code == 0, err and _panels(tmp_path / "c2.png") == 2
    assert _panels(tmp_path / "c2.png") == 2


def test_confusion_matrix_png_and_bad_inputs(tmp_path, capsys):
    report = {"miou": 50.0, "per_class_iou": {"sky": 90.0, "road": 10.0, "car": None},
              "confusion": [[9, 1, 0], [5, 5, 0], [0, 0, 0]]}  # fmt: skip
    (tmp_path / "e.json").write_text(json.dumps(report))
    code, _, err = run_cli(["plot", "--confusion", tmp_path / "e.json", "--out",
                            tmp_path / "m.png"], capsys)  # fmt: skip
    assert code == 0, err
    image = cv2.imread(str(tmp_path / "m.png"))
    assert image is not None and min(image.shape[:2]) > 200
    (tmp_path / "bad.json").write_text('{"miou": 1}')
    code, _, err = run_cli(["plot", "--confusion", tmp_path / "bad.json"], capsys)
    assert code == 2 and "not an eval --json report" in err
    code, _, err = run_cli(["plot", tmp_path / "nothing", "--out", tmp_path / "x.png"], capsys)
    assert code == 2 and "metrics.jsonl: no metrics" in err
    code, _, err = run_cli(["plot"], capsys)
    assert code == 2 and "give run directories" in err


def test_a_one_step_run_still_draws(tmp_path, capsys):
    """A run that logged one step: its loss and learning rate show as points, not nothing."""
    run = tmp_path / "one"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 2.0, "lr": 0.01}) + "\n")
    code, _, err = run_cli(["plot", run, "--out", tmp_path / "c.png"], capsys)
    assert code == 0, err
    image = cv2.imread(str(tmp_path / "c.png"))  # BGR; matplotlib's C0 is RGB (31, 119, 180)
    blue = (np.abs(image.astype(int) - [180, 119, 31]).sum(-1) < 40).sum()
    assert blue > 20  # the markers (a lone point drawn as a line would be invisible)
