"""segmentation_models.pytorch networks (--arch): sizes, the box path, checkpoints, weights."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from boxseg.checkpoint import load_model, read_checkpoint, save_model
from boxseg.config_file import read_config
from boxseg.errors import BoxsegError
from boxseg.models import BoxPathSpec, DeepLabV3Plus, ModelSpec, build_model
from boxseg.models.smp_net import SmpNet, features_read
from tests.conftest import TINY_TRAIN, run_cli

BOXES = 4
# (arch, encoder, the side multiple SmpNet pads to): the DeepLab family pads to its output
# stride (16 here), FPN to the encoder's 32; smp's Unet takes any size itself (no padding).
NETS = [
    ("deeplabv3plus", "resnet18", 16),
    ("unet", "resnet18", 32),
    ("fpn", "resnet18", 32),
    ("unet", "tu-convnext_atto", 32),
]


def _spec(arch: str, encoder: str = "resnet18") -> ModelSpec:
    return ModelSpec(encoder, 16, 16, 16, arch=arch)


def _boxes(n: int, h: int, w: int) -> torch.Tensor:
    """A box tensor: channel 0 everywhere, one box of channel 2."""
    b = torch.zeros(n, BOXES, h, w)
    b[:, 0] = 1.0
    b[:, 2, 5:30, 10:40], b[:, 0, 5:30, 10:40] = 1.0, 0.0
    return b


def _pad(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zeros at the bottom and right up to the next multiple of `multiple`."""
    h, w = x.shape[-2:]
    return F.pad(x, (0, -w % multiple, 0, -h % multiple))


def _meta(spec: ModelSpec, kind: str, box_channels: int | None) -> dict:
    return {
        "kind": kind,
        "model": spec.to_dict(),
        "class_names": ["a", "b", "c"],
        "box_channels": box_channels,
        "background": None,
        "boxes": {},
        "mean": [0, 0, 0],
        "std": [1, 1, 1],
    }


@pytest.mark.parametrize(("arch", "encoder", "stride"), NETS)
def test_logits_at_any_size_are_those_of_the_image_padded_bottom_right(arch, encoder, stride):
    """45x61 is no multiple of 32: the logits come back at 45x61, and are the top-left of the
    logits of the image zero-padded at the bottom and right (a wrong pad or crop side fails)."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, 45, 61)
    primary = build_model(_spec(arch, encoder), 3).eval()
    anc = build_model(_spec(arch, encoder), 3, box_channels=BOXES).eval()
    assert isinstance(primary, SmpNet) and primary.stride == stride
    b = _boxes(1, 45, 61)
    with torch.no_grad():
        y, ya = primary(x), anc(x, b)
        assert y.shape == ya.shape == (1, 3, 45, 61)
        if stride > 1:
            torch.testing.assert_close(y, primary(_pad(x, stride))[..., :45, :61])
            torch.testing.assert_close(ya, anc(_pad(x, stride), _pad(b, stride))[..., :45, :61])
        assert primary(torch.randn(2, 3, 33, 70)).shape == (2, 3, 33, 70)


@pytest.mark.parametrize(
    ("arch", "encoder", "expected"),
    [
        ("deeplabv3plus", "resnet18", [2, 5]),  # DeepLabV3PlusDecoder: features[2], [-1]
        ("unet", "resnet18", [1, 2, 3, 4, 5]),
        ("fpn", "resnet18", [2, 3, 4, 5]),
        ("unet", "tu-convnext_atto", [2, 3, 4, 5]),  # timm's stride-2 feature has 0 channels
    ],
)
def test_features_read_are_those_the_decoder_uses(arch, encoder, expected):
    """Replacing a feature the decoder reads changes its output; any other feature does not."""
    net = build_model(_spec(arch, encoder), 3).train()
    assert features_read(net.encoder, net.decoder) == expected
    assert net.encoder.training and net.decoder.training  # the probe restores the mode
    net.eval()
    with torch.no_grad():
        feats = list(net.encoder(torch.randn(1, 3, 64, 64)))
        out = net.decoder(feats)
        for i, f in enumerate(feats):
            if f.shape[1] == 0:
                continue
            other = [*feats[:i], torch.randn_like(f), *feats[i + 1 :]]
            assert torch.equal(net.decoder(other), out) == (i not in expected), i
    anc = build_model(_spec(arch, encoder), 3, box_channels=BOXES)
    assert anc.box_read == expected
    assert [c.out_channels for c in anc.box_encoder.convs] == [
        anc.encoder.out_channels[i] for i in expected
    ]


@pytest.mark.parametrize("arch", ["deeplabv3plus", "unet", "fpn"])
def test_every_ancillary_parameter_gets_a_gradient(arch):
    """DDP refuses a parameter without a gradient: no box-encoder conv may be unused."""
    torch.manual_seed(0)
    anc = build_model(_spec(arch), 3, box_channels=BOXES).train()
    anc(torch.randn(2, 3, 64, 64), _boxes(2, 64, 64)).logsumexp(1).mean().backward()
    missing = [n for n, p in anc.named_parameters() if p.grad is None]
    assert missing == []
    assert all(c.weight.grad.abs().sum() > 0 for c in anc.box_encoder.convs)


@pytest.mark.parametrize("arch", ["deeplabv3plus", "unet", "fpn"])
@pytest.mark.parametrize("direct", [False, True])
def test_the_box_path_changes_the_logits(arch, direct):
    torch.manual_seed(0)
    anc = build_model(_spec(arch), 3, box_channels=BOXES, box_path=BoxPathSpec("max", direct))
    anc.eval()
    x = torch.randn(1, 3, 64, 64)
    b1 = _boxes(1, 64, 64)
    b2 = b1.clone()
    b2[:, 1, 30:60, 30:60], b2[:, 0, 30:60, 30:60] = 1.0, 0.0
    with torch.no_grad():
        decoded = anc.decoder(list(anc.encoder(x))).shape[1]
        assert anc.segmentation_head[0].in_channels == decoded + (BOXES if direct else 0)
        assert anc.box_direct == direct
        assert (anc(x, b1) - anc(x, b2)).abs().max() > 1e-5
        with pytest.raises(ValueError, match="box"):
            anc(x)


@pytest.mark.parametrize(("kind", "boxes"), [("ancillary", BOXES), ("primary", None)])
def test_checkpoint_round_trip(tmp_path, kind, boxes):
    spec = _spec("unet")
    model = build_model(spec, 3, box_channels=boxes).eval()
    save_model(tmp_path / "model.pt", model, _meta(spec, kind, boxes))
    recorded = read_checkpoint(tmp_path / "model.pt")["model"]
    assert recorded == spec.to_dict()
    assert recorded["arch"] == "unet" and recorded["backbone"] == "resnet18"
    loaded, meta = load_model(tmp_path / "model.pt", kind)
    assert isinstance(loaded, SmpNet) and type(loaded.decoder).__name__ == "UnetDecoder"
    assert not loaded.training and meta["kind"] == kind
    x = torch.randn(1, 3, 45, 61)
    args = (x,) if boxes is None else (x, _boxes(1, 45, 61))
    with torch.no_grad():
        torch.testing.assert_close(loaded(*args), model(*args), rtol=0, atol=0)


def test_checkpoint_without_arch_loads_as_boxsegs_own_deeplab(tmp_path):
    """Every 0.2 checkpoint's "model" dict lacks "arch": it is boxseg's own DeepLabv3+."""
    spec = ModelSpec("resnet18", 16, 16, 16, 8)
    assert spec.arch == "boxseg"
    model = build_model(spec, 3).eval()
    save_model(tmp_path / "new.pt", model, _meta(spec, "primary", None))
    old = torch.load(tmp_path / "new.pt", weights_only=True)
    del old["model"]["arch"]
    torch.save(old, tmp_path / "old.pt")
    loaded, _ = load_model(tmp_path / "old.pt", "primary")
    assert isinstance(loaded, DeepLabV3Plus)
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_pretrained_file_of_an_encoder_state_dict_fills_the_encoder(tmp_path):
    """Another net's encoder (a unet's, stride 32) fills a deeplabv3plus encoder (dilated)."""
    source = build_model(_spec("unet"), 5)
    path = tmp_path / "enc.pth"
    torch.save(source.encoder.state_dict(), path)
    net = build_model(_spec("deeplabv3plus"), 3, box_channels=BOXES, pretrained=str(path))
    want = source.encoder.state_dict()
    assert net.pretrained == {
        "source": str(path),
        "tensors_filled": len(want),
        "tensors": len(want),
    }
    got = net.encoder.state_dict()
    assert got.keys() == want.keys()
    for k, v in want.items():
        assert torch.equal(got[k], v), k
    assert build_model(_spec("unet"), 3).pretrained is None


def test_pretrained_file_of_a_whole_smp_model_fills_the_encoder(tmp_path):
    import segmentation_models_pytorch as smp

    whole = smp.create_model("fpn", encoder_name="resnet18", encoder_weights=None, classes=7)
    path = tmp_path / "fpn.pth"
    torch.save({"state_dict": whole.state_dict()}, path)  # (wrapped, as many training loops do)
    net = build_model(_spec("unet"), 3, pretrained=str(path))
    want = whole.encoder.state_dict()
    assert net.pretrained["tensors_filled"] == net.pretrained["tensors"] == len(want)
    for k, v in net.encoder.state_dict().items():
        assert torch.equal(v, want[k]), k


def test_pretrained_file_of_another_encoder_is_refused_naming_the_file(tmp_path):
    import segmentation_models_pytorch as smp

    mobile = smp.create_model("unet", encoder_name="mobilenet_v2", encoder_weights=None)
    path = tmp_path / "mobilenet.pth"
    torch.save(mobile.encoder.state_dict(), path)
    with pytest.raises(BoxsegError, match="tensors of the resnet18 encoder") as e:
        build_model(_spec("unet"), 3, pretrained=str(path))
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    small = tmp_path / "r18.pth"  # fills only the first blocks of each resnet34 stage
    torch.save(build_model(_spec("unet"), 3).encoder.state_dict(), small)
    with pytest.raises(BoxsegError, match="tensors of the resnet34 encoder") as e:
        build_model(_spec("unet", "resnet34"), 3, pretrained=str(small))
    assert str(small) in str(e.value)


def test_pretrained_file_of_a_larger_encoder_is_refused(tmp_path):
    """resnet34's weights hold every resnet18 tensor name and shape (its first blocks per
    stage), but they are another network's: most of the file would go unused."""
    big = tmp_path / "r34.pth"
    torch.save(build_model(_spec("unet", "resnet34"), 3).encoder.state_dict(), big)
    with pytest.raises(BoxsegError) as e:
        build_model(_spec("unet"), 3, pretrained=str(big))
    assert str(big) in str(e.value) and "\n" not in str(e.value)


def test_unknown_pretrained_name_is_refused_without_the_network(monkeypatch):
    import segmentation_models_pytorch.encoders as smp_encoders

    calls = []

    def offline(*args, **kwargs):
        calls.append(args)
        raise OSError("no network in tests")

    monkeypatch.setattr(smp_encoders, "hf_hub_download", offline)
    with pytest.raises(BoxsegError, match=r"--pretrained nope: .*nope.*resnet18") as e:
        build_model(_spec("unet"), 3, pretrained="nope")
    assert calls == [] and "\n" not in str(e.value)
    assert "imagenet" in str(e.value)  # smp's list of the names it has


@pytest.mark.filterwarnings("ignore:For 'tu-'")
def test_unknown_pretrained_name_of_a_timm_encoder_is_refused_without_the_network(monkeypatch):
    """smp warns and then downloads timm's default weights for any name of a tu- encoder."""
    import timm.models._builder as timm_builder

    calls = []

    def offline(*args, **kwargs):
        calls.append(args)
        raise OSError("no network in tests")

    monkeypatch.setattr(timm_builder, "load_pretrained", offline)
    with pytest.raises(BoxsegError, match="--pretrained nope") as e:
        build_model(_spec("unet", "tu-convnext_atto"), 3, pretrained="nope")
    assert calls == [] and "\n" not in str(e.value)  # refused before any download


def test_pretrained_download_that_fails_says_to_pass_a_file(monkeypatch):
    """No network: one line that says what to do instead of huggingface_hub's traceback."""
    import segmentation_models_pytorch.encoders as smp_encoders
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(*args, **kwargs):
        raise LocalEntryNotFoundError("cannot find the requested files in the local cache")

    monkeypatch.setattr(smp_encoders, "hf_hub_download", offline)
    with pytest.raises(BoxsegError, match="--pretrained imagenet: cannot get the resnet18") as e:
        build_model(_spec("unet"), 3, pretrained="imagenet")
    assert "pass its path as --pretrained" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        (ModelSpec("resnet18", arch="nope"), r"--arch nope: unknown \(choose boxseg or one of "),
        (ModelSpec("resnet19", arch="unet"), "--arch unet --encoder resnet19: not an smp encoder"),
        (ModelSpec("tu-no_such_net", arch="fpn"), "--arch fpn --encoder tu-no_such_net: "),
    ],
)
def test_unknown_arch_or_encoder_is_one_line(spec, match):
    with pytest.raises(BoxsegError, match=match) as e:
        build_model(spec, 3)
    assert "\n" not in str(e.value)
    if spec.arch == "nope":
        assert "unet" in str(e.value) and "deeplabv3plus" in str(e.value)


def test_config_file_backbone_is_the_encoder(tiny_data, tmp_path, capsys):
    """A config file written for 0.2 (`backbone = ...`) still names the encoder."""
    cfg = tmp_path / "anc.toml"
    cfg.write_text('backbone = "resnet18"\narch = "unet"\nnum-full = 4\n')
    assert read_config(cfg) == {"encoder": "resnet18", "arch": "unet", "num_full": 4}
    out = tmp_path / "r"
    code, _, err = run_cli(
        ["train-anc", tiny_data, "--out", out, "--config", cfg, *TINY_TRAIN], capsys
    )
    assert code == 0, err
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["backbone"] == "resnet18" and config["model"]["arch"] == "unet"
    ckpt = read_checkpoint(out / "model.pt")
    assert ckpt["model"]["backbone"] == "resnet18" and ckpt["model"]["arch"] == "unet"
    assert ckpt["arch"] == "smp unet resnet18"  # the top-level name says the same network
    loaded, _ = load_model(out / "model.pt", "ancillary")
    assert isinstance(loaded, SmpNet) and type(loaded.decoder).__name__ == "UnetDecoder"


@pytest.mark.parametrize("box_channels", [None, BOXES])
def test_dpt_is_refused_in_one_line(box_channels):
    """smp's dpt asserts on any input but its ViT's 224x224 (the ancillary probe is 256x256):
    refused when built, before any forward."""
    with pytest.raises(BoxsegError, match="--arch dpt: needs a fixed input size") as e:
        build_model(_spec("dpt", "tu-vit_tiny_patch16_224"), 3, box_channels=box_channels)
    assert "\n" not in str(e.value)


def test_pspnet_builds_and_loads_anywhere_but_is_refused_for_ddp_training():
    """pspnet reads only the first encoder stages: DDP would refuse the gradient-less rest, so
    engine.fit refuses it in one line before wrapping; building it (to train in one process,
    or to load it for gen-logits under torchrun) stays allowed."""
    from boxseg.engine import refuse_under_ddp

    net = build_model(_spec("pspnet"), 3).eval()
    assert type(net.decoder).__name__ == "PSPDecoder"
    with torch.no_grad():
        assert net(torch.randn(1, 3, 45, 61)).shape == (1, 3, 45, 61)
    with pytest.raises(BoxsegError, match="--arch pspnet: not supported under torchrun") as e:
        refuse_under_ddp(nn.ModuleDict({"primary": net}))
    assert "\n" not in str(e.value) and "DistributedDataParallel" in str(e.value)
    refuse_under_ddp(nn.ModuleDict({"primary": build_model(_spec("unet"), 3)}))  # no refusal


def test_an_architecture_failing_the_probe_is_one_line_naming_it(monkeypatch):
    """pan's pyramid pooling fails on small inputs: the build-time probe says which net."""
    import boxseg.models.smp_net as smp_net

    monkeypatch.setattr(smp_net, "PROBE", 32)
    with pytest.raises(BoxsegError, match=r"--arch pan --encoder resnet18: fails on a 32x32") as e:
        build_model(_spec("pan"), 3, box_channels=BOXES)
    assert "Output size is too small" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("name", ["nope.pth", "weights/encoder", "enc.safetensors"])
def test_pretrained_path_that_does_not_exist_is_file_not_found(tmp_path, monkeypatch, name):
    """A path-like value is a mistyped file, not a weights name for smp to look up."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BoxsegError) as e:
        build_model(_spec("unet"), 3, pretrained=name)
    assert str(e.value) == f"{name}: file not found"
    with pytest.raises(BoxsegError) as e:
        build_model(_spec("unet"), 3, pretrained=str(tmp_path / name))
    assert str(e.value) == f"{tmp_path / name}: file not found"


@pytest.mark.parametrize("text", ['{"encoder": "resnet18"}\n', "model = resnet18\n"])
def test_pretrained_text_file_is_one_line_naming_it(tmp_path, text):
    """torch.load's weights-only error is a paragraph: boxseg says it in one line."""
    path = tmp_path / "weights.pth"
    path.write_text(text)
    with pytest.raises(BoxsegError) as e:
        build_model(_spec("unet"), 3, pretrained=str(path))
    assert str(e.value).startswith(f"{path}: ") and "\n" not in str(e.value)
    assert "not a torch file" in str(e.value)


def _timm_convnext_atto() -> dict:
    """A plain timm state dict (timm's own names: stem.0, stages.0 ..., and a head)."""
    import timm

    torch.manual_seed(0)
    return timm.create_model("convnext_atto", pretrained=False).state_dict()


def _assert_filled_from_timm(net: SmpNet, state: dict) -> None:
    filled, tensors = net.pretrained["tensors_filled"], net.pretrained["tensors"]
    assert filled >= 0.95 * tensors and filled == tensors == len(state) - 4  # all but the head
    got = net.encoder.state_dict()
    for timm_key, smp_key in [
        ("stem.0.weight", "model.stem_0.weight"),
        ("stages.3.blocks.1.mlp.fc2.weight", "model.stages_3.blocks.1.mlp.fc2.weight"),
    ]:
        assert torch.equal(got[smp_key], state[timm_key]), smp_key


def test_pretrained_timm_state_dict_fills_a_tu_encoder(tmp_path):
    """smp's TimmUniversalEncoder holds timm's features-only net under `model.`, with its
    top-level stages flattened (stages.0 -> stages_0): a plain timm file still fills it."""
    state = _timm_convnext_atto()
    path = tmp_path / "convnext_atto.pth"
    torch.save(state, path)
    net = build_model(
        _spec("unet", "tu-convnext_atto"), 3, box_channels=BOXES, pretrained=str(path)
    )
    _assert_filled_from_timm(net, state)
    assert net.pretrained["source"] == str(path)


def test_pretrained_safetensors_file_is_read(tmp_path, monkeypatch):
    """The format timm's hub weights come in; a torn file or no safetensors is one line."""
    from safetensors.torch import save_file

    state = _timm_convnext_atto()
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, path)
    net = build_model(_spec("fpn", "tu-convnext_atto"), 3, pretrained=str(path))
    _assert_filled_from_timm(net, state)
    torn = tmp_path / "torn.safetensors"
    torn.write_bytes(path.read_bytes()[:100])
    with pytest.raises(BoxsegError, match="unreadable safetensors file") as e:
        build_model(_spec("fpn", "tu-convnext_atto"), 3, pretrained=str(torn))
    assert str(e.value).startswith(f"{torn}: ") and "\n" not in str(e.value)
    import sys

    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(BoxsegError, match="pip install safetensors"):
        build_model(_spec("fpn", "tu-convnext_atto"), 3, pretrained=str(path))
