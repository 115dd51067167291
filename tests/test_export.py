"""`boxseg export`: ONNX files that onnxruntime runs to the logits PyTorch gives."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from boxseg.checkpoint import load_model
from boxseg.data.split import SplitSpec
from boxseg.engine import TrainConfig
from boxseg.export import TOLERANCE
from boxseg.models import ModelSpec
from boxseg.primary_options import PrimaryOptions
from boxseg.train_primary import train_primary
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def primary_model(pipeline, tmp_path_factory):
    run = tmp_path_factory.mktemp("primary") / "run"
    cfg = TrainConfig(iters=2, batch_size=2, crop=32, device="cpu")
    spec = ModelSpec("resnet18", 16, 16, 16, 8)
    split = SplitSpec("train", 4, 0)
    train_primary(PrimaryOptions(pipeline["data"], run, split, spec, cfg, val_split=None), True)
    return run / "model.pt"


def test_primary_model_exports_with_dynamic_batch_and_size(primary_model, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    code, stdout, err = run_cli(["export", primary_model, "--out", out], capsys)
    assert code == 0, err
    assert "onnxruntime matches PyTorch" in stdout
    model, meta = load_model(primary_model)
    info = json.loads({p.key: p.value for p in onnx.load(out).metadata_props}["boxseg"])
    assert info["class_names"] == meta["class_names"] and info["inputs"] == ["image"]
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for shape in [(1, 3, 40, 56), (3, 3, 97, 65)]:  # sizes and batches the export never saw
        x = torch.randn(*shape)
        got = session.run(None, {"image": x.numpy()})[0]
        with torch.no_grad():
            want = model(x).numpy()
        assert got.shape == want.shape == (shape[0], len(meta["class_names"]), *shape[2:])
        assert np.abs(got - want).max() <= TOLERANCE


def test_ancillary_model_exports_with_its_box_input(pipeline, tmp_path, capsys):
    out = tmp_path / "anc.onnx"
    code, stdout, err = run_cli(["export", pipeline["anc"], "--out", out, "--size", "48x48"],
                                capsys)  # fmt: skip
    assert code == 0, err
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image", "boxes"]
    model, meta = load_model(pipeline["anc"])
    assert "fixed size 48x48" in stdout
    x, b = torch.randn(3, 3, 48, 48), (torch.rand(3, meta["box_channels"], 48, 48) > 0.5).float()
    got = session.run(None, {"image": x.numpy(), "boxes": b.numpy()})[0]
    with torch.no_grad():
        assert np.abs(got - model(x, b).numpy()).max() <= TOLERANCE


def test_export_of_a_missing_model_is_one_line(tmp_path, capsys):
    code, _, err = run_cli(["export", tmp_path / "nope.pt"], capsys)
    assert code == 2 and "nope.pt" in err and len(err.strip().splitlines()) == 1
