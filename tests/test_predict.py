import numpy as np
import torch

from boxseg.checkpoint import save_model
from boxseg.data.boxes import BoxSpec
from boxseg.data.formats import open_dataset
from boxseg.io import read_image, read_label_png
from boxseg.models import ModelSpec, build_model
from boxseg.predict import palette
from boxseg.run_dir import model_meta
from tests.conftest import run_cli


def test_palette_is_voc():
    p = palette(4)
    assert p.tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]


def test_predict_writes_labels_and_overlays(tiny_data, tmp_path, capsys):
    ds = open_dataset(tiny_data)
    spec = ModelSpec("resnet18", 16, 16, 16, 8)
    net = build_model(spec, ds.num_classes).eval()
    with torch.no_grad():  # make class 2 win everywhere
        net.classifier.weight.zero_()
        net.classifier.bias.copy_(torch.tensor([0.0, 0.0, 5.0, 0.0, 0.0]))
    meta = model_meta("primary", spec, ds, BoxSpec(), None, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    save_model(tmp_path / "m.pt", net, meta)
    code, _, err = run_cli(["predict", tmp_path / "m.pt", tiny_data / "val", "--out",
                            tmp_path / "pred", "--device", "cpu", "--quiet"], capsys)  # fmt: skip
    assert code == 0, err
    first = ds.ids("val")[0]
    pred = read_label_png(tmp_path / "pred" / f"{first}.png")
    assert pred.shape == (32, 32) and (pred == 2).all()
    image = read_image(tiny_data / "val" / f"{first}.png").astype(np.float32)
    over = read_image(tmp_path / "pred" / f"{first}_overlay.png").astype(np.float32)
    expected = image * 0.5 + np.array([0, 128, 0]) * 0.5  # class 2 is green in the VOC map
    assert np.abs(over - expected).max() <= 1
    assert len(list((tmp_path / "pred").glob("*_overlay.png"))) == 4


def test_predict_refuses_ancillary_and_missing_input(pipeline, tmp_path, capsys):
    code, _, err = run_cli(["predict", pipeline["anc"], pipeline["data"] / "val", "--out",
                            tmp_path / "p"], capsys)  # fmt: skip
    assert code == 2 and "needs boxes" in err
    code, _, err = run_cli(
        ["predict", pipeline["anc"], tmp_path / "nope", "--out", tmp_path], capsys
    )
    assert code == 2
