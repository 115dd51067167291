"""Whole-image inference and its test-time augmentation (eval --flip --scales)."""

import json

import numpy as np
import torch
from torch import nn

from boxseg.inference import predict_logits
from tests.conftest import run_cli

META = {"kind": "primary", "mean": [0.0] * 3, "std": [1.0] * 3, "class_names": ["a", "b"]}


class Pointwise(nn.Module):
    """A 1x1 convolution: commutes with flips and (up to interpolation) with rescaling."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)

    def forward(self, x, boxes=None):
        return self.conv(x)


class LeftRight(nn.Module):
    """Says 'class 1' more the further right a pixel is: not flip-invariant."""

    def forward(self, x, boxes=None):
        ramp = torch.linspace(-3, 3, x.shape[-1]).expand(*x.shape[-2:])
        return torch.stack([-ramp, ramp])[None].expand(x.shape[0], -1, -1, -1)


def test_no_tta_returns_the_raw_logits_and_flip_of_an_equivariant_model_changes_nothing():
    torch.manual_seed(0)
    model = Pointwise().eval()
    image = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    plain = predict_logits(model, META, image, torch.device("cpu"))
    tta = predict_logits(model, META, image, torch.device("cpu"), flip=True)
    torch.testing.assert_close(tta, torch.log_softmax(plain, 0), atol=1e-5, rtol=1e-5)
    yy, xx = np.mgrid[0:20, 0:30]
    smooth = np.stack([xx * 8, yy * 12, (xx + yy) * 5], -1).astype(np.uint8)  # survives resizing
    plain = predict_logits(model, META, smooth, torch.device("cpu"))
    scaled = predict_logits(model, META, smooth, torch.device("cpu"), scales=(0.5, 1.0, 2.0))
    assert scaled.shape == plain.shape
    assert (scaled.argmax(0) == plain.argmax(0)).float().mean() > 0.9


def test_flip_averages_a_model_with_its_mirror_image():
    image = np.zeros((8, 16, 3), np.uint8)
    plain = predict_logits(LeftRight(), META, image, torch.device("cpu"))
    assert plain.argmax(0)[:, -1].eq(1).all() and plain.argmax(0)[:, 0].eq(0).all()
    tta = predict_logits(LeftRight(), META, image, torch.device("cpu"), flip=True)
    torch.testing.assert_close(tta.exp(), torch.full_like(tta, 0.5))  # left and right cancel


def test_eval_tta_and_saved_predictions_score_the_same(pipeline, tmp_path, capsys):
    report = tmp_path / "r.json"
    code, _, err = run_cli(["eval", pipeline["data"], "--model", pipeline["anc"], "--flip",
                            "--scales", "0.75,1.0", "--save-pred", tmp_path / "pred", "--json",
                            report, "--device", "cpu", "--quiet"], capsys)  # fmt: skip
    assert code == 0, err
    val = (pipeline["data"] / "val.txt").read_text().split()
    assert sorted(p.stem for p in (tmp_path / "pred").glob("*.png")) == sorted(val)
    again = tmp_path / "again.json"
    code, _, err = run_cli(["eval", pipeline["data"], "--pred-dir", tmp_path / "pred", "--json",
                            again, "--quiet"], capsys)  # fmt: skip
    assert code == 0, err
    assert json.loads(again.read_text())["miou"] == json.loads(report.read_text())["miou"]
    code, _, err = run_cli(["eval", pipeline["data"], "--model", pipeline["anc"], "--scales",
                            "0,x"], capsys)  # fmt: skip
    assert code == 2 and "--scales 0,x" in err


def test_sliding_window_equals_the_whole_image_for_a_local_model():
    from boxseg.inference import windowed

    torch.manual_seed(0)
    model = Pointwise().eval()
    x = torch.randn(1, 3, 40, 50)
    with torch.no_grad():
        whole = model(x)
        tiled = windowed(model, x, None, window=16)  # 16x16 tiles, overlapping
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=1e-5)
    calls = []
    spy = Pointwise().eval()
    spy.register_forward_hook(lambda m, i, o: calls.append(tuple(i[0].shape[-2:])))
    with torch.no_grad():
        windowed(spy, x, None, window=16)
    assert set(calls) == {(16, 16)} and len(calls) > 4  # every tile is a full window
