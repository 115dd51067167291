import pytest
import torch

from boxseg.errors import BoxsegError
from boxseg.models import ModelSpec, build_model
from boxseg.models.backbone import BACKBONES, build_backbone


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnet101", "mobilenet_v3_large"])
@pytest.mark.parametrize("os_", [8, 16])
def test_backbone_strides(name, os_):
    bb = build_backbone(name, os_).eval()
    with torch.no_grad():
        low, high = bb(torch.zeros(1, 3, 64, 64))
    assert low.shape[1:] == (bb.low_channels, 16, 16)
    assert high.shape[1:] == (bb.high_channels, 64 // os_, 64 // os_)


def test_unknown_backbone_and_stride():
    with pytest.raises(BoxsegError, match="unknown backbone"):
        build_backbone("vgg16")
    with pytest.raises(BoxsegError, match="8 or 16"):
        build_backbone("resnet18", 32)
    assert "resnet50" in BACKBONES


def test_primary_output_shape_any_input_size():
    m = build_model(ModelSpec("resnet18", 16, 16, 16, 8), 5).eval()
    assert m(torch.zeros(1, 3, 45, 70)).shape == (1, 5, 45, 70)


def test_ancillary_uses_boxes_at_both_scales():
    torch.manual_seed(0)
    m = build_model(ModelSpec("resnet18", 16, 16, 16, 8), 3, box_channels=3).eval()
    x = torch.randn(1, 3, 64, 64)
    b1 = torch.zeros(1, 3, 64, 64)
    b1[:, 0] = 1
    b2 = b1.clone()
    b2[:, 1, 8:40, 8:40], b2[:, 0, 8:40, 8:40] = 1, 0
    with torch.no_grad():
        assert not torch.allclose(m(x, b1), m(x, b2))
        with pytest.raises(ValueError, match="box"):
            m(x)
    assert [c.out_channels for c in m.box_encoder.convs] == [16, 8]
    assert all(c.kernel_size == (3, 3) for c in m.box_encoder.convs)
    # gradient reaches both box-encoder convs
    m.train()
    m(torch.randn(2, 3, 64, 64), b2.repeat(2, 1, 1, 1)).sum().backward()
    assert all(c.weight.grad.abs().sum() > 0 for c in m.box_encoder.convs)


def test_pretrained_from_local_state_dict(tmp_path):
    import torchvision

    ref = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)
    bb = build_backbone("resnet18", 16, str(path))
    torch.testing.assert_close(bb.low[0].weight, ref.conv1.weight)
    bad = tmp_path / "bad.pth"
    torch.save({"x": torch.zeros(1)}, bad)
    with pytest.raises(BoxsegError, match="no weights"):
        build_backbone("resnet18", 16, str(bad))
    with pytest.raises(BoxsegError, match="--pretrained"):
        build_backbone("resnet18", 16, "no/such/file.pth")


def test_pretrained_file_of_another_architecture_is_refused_naming_it(tmp_path):
    """A resnet18 state dict for a resnet34 backbone fills only the tensors whose names and
    shapes match (about half): refused in one line that names what the file looks like."""
    import torchvision

    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(
        BoxsegError, match=r"fills \d+ of the \d+ tensors of a resnet34 backbone;"
    ) as e:
        build_backbone("resnet34", 16, str(path))
    assert "looks like a torchvision resnet18" in str(e.value) and "\n" not in str(e.value)


def test_pretrained_file_that_matches_fills_every_backbone_tensor(tmp_path):
    import torchvision

    ref = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save({"state_dict": ref.state_dict()}, path)  # (a wrapped state dict, as many save)
    bb = build_backbone("resnet18", 16, str(path))
    n = len([k for k in ref.state_dict() if not k.startswith("fc.")])
    assert bb.pretrained == {"source": str(path), "tensors_filled": n, "tensors": n}
    torch.testing.assert_close(bb.high[-1][-1].bn2.running_var, ref.layer4[-1].bn2.running_var)
    assert build_backbone("resnet18", 16, "none").pretrained is None


def test_pretrained_download_that_fails_is_one_line_naming_where_the_file_goes(monkeypatch):
    """No network: torchvision's download raises URLError (an OSError); the user gets where
    to put the file instead of a traceback."""
    from urllib.error import URLError

    def offline(*args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(BoxsegError, match=r"--pretrained imagenet: cannot get https://") as e:
        build_backbone("resnet18", 16, "imagenet")
    assert "resnet18-" in str(e.value) and "checkpoints" in str(e.value)
    assert "\n" not in str(e.value)
