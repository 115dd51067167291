"""The box path: thin boxes survive every injection scale; the direct path; old checkpoints."""

import pytest
import torch

from boxseg.checkpoint import load_model, read_checkpoint, save_model
from boxseg.errors import BoxsegError
from boxseg.models import BoxPathSpec, ModelSpec, build_model
from boxseg.models.box_encoder import resize_boxes

SPEC = ModelSpec("resnet18", 16, 16, 16, 8)


def _feature_sizes(model, size: int) -> list[tuple[int, int]]:
    """The sizes of the deep (ASPP) and skip features the box encoder injects into."""
    with torch.no_grad():
        low, high = model.backbone(torch.zeros(1, 3, size, size))
    return [tuple(high.shape[-2:]), tuple(low.shape[-2:])]


@pytest.mark.parametrize("column", [0, 5, 6, 7, 33, 63])
@pytest.mark.parametrize("output_stride", [8, 16])
def test_one_pixel_wide_box_reaches_every_injection_scale(column, output_stride):
    model = build_model(ModelSpec("resnet18", output_stride, 16, 16, 8), 3, box_channels=4)
    boxes = torch.zeros(1, 4, 64, 64)
    boxes[0, 2, 10:50, column] = 1.0  # a pole: 1 pixel wide
    sizes = _feature_sizes(model, 64)
    maps = model.box_encoder(boxes, sizes)
    empty = model.box_encoder(torch.zeros_like(boxes), sizes)
    for size, m, e in zip(sizes, maps, empty, strict=True):
        assert resize_boxes(boxes, size, "max")[0, 2].sum() > 0, (size, column)
        assert not torch.allclose(m, e)  # the attention map at this scale sees the box


def test_nearest_resize_loses_thin_boxes():
    """Why max-pooling: the paper's nearest resize drops a 1-pixel box at stride 16."""
    boxes = torch.zeros(1, 2, 64, 64)
    boxes[0, 1, :, 6] = 1.0
    assert resize_boxes(boxes, (4, 4), "nearest")[0, 1].sum() == 0
    assert resize_boxes(boxes, (4, 4), "max")[0, 1].sum() > 0


def test_direct_path_lets_a_box_create_evidence_where_features_are_zero():
    torch.manual_seed(0)
    model = build_model(SPEC, 3, box_channels=4, box_path=BoxPathSpec("max", True)).eval()
    assert model.decoder[0].in_channels == 16 + 8 + 4
    for m in (model.aspp, model.skip):  # no image evidence at all: every feature is 0
        for p in m.parameters():
            torch.nn.init.zeros_(p)
    x = torch.zeros(1, 3, 64, 64)
    boxes = torch.zeros(1, 4, 64, 64)
    boxes[0, 3] = 1.0
    with_box = boxes.clone()
    with_box[0, 1, 20:40, 20:40], with_box[0, 3, 20:40, 20:40] = 1.0, 0.0
    with torch.no_grad():
        a, b = model(x, boxes), model(x, with_box)
    assert (a - b).abs().max() > 1e-4  # attention alone (multiplying zeros) could not do this
    legacy = build_model(SPEC, 3, box_channels=4, box_path=BoxPathSpec.legacy())
    assert legacy.decoder[0].in_channels == 16 + 8


def test_checkpoint_without_box_path_loads_as_legacy(tmp_path):
    model = build_model(SPEC, 3, box_channels=4, box_path=BoxPathSpec.legacy())
    meta = {"kind": "ancillary", "model": SPEC.to_dict(), "class_names": ["a", "b", "c"],
            "box_channels": 4, "background": None, "boxes": {}, "mean": [0, 0, 0],
            "std": [1, 1, 1]}  # fmt: skip
    save_model(tmp_path / "now.pt", model, meta)
    old = read_checkpoint(tmp_path / "now.pt")
    assert old["box_path"] == {"resize": "nearest", "direct": False}  # read off the model
    del old["box_path"]  # as written before `box_path` existed
    torch.save(old, tmp_path / "old.pt")
    loaded, _ = load_model(tmp_path / "old.pt")
    assert not loaded.box_direct and loaded.box_encoder.resize == "nearest"
    # the same weights described as the new box path do not fit: one clear line
    torch.save(old | {"box_path": BoxPathSpec().to_dict()}, tmp_path / "bad.pt")
    with pytest.raises(BoxsegError, match="bad.pt: its weights do not fit") as e:
        load_model(tmp_path / "bad.pt")
    assert "\n" not in str(e.value) and "decoder.0.weight" in str(e.value)
