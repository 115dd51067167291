"""The whole pipeline through the CLI with segmentation_models.pytorch networks (`--arch`,
`--encoder`): train-anc -> gen-logits -> train-primary -> eval / predict / rank / viz / export,
on the tiny generated dataset, trained from scratch."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from boxseg.cells import pool_logits
from boxseg.checkpoint import file_sha256, load_model, read_checkpoint
from boxseg.data.boxes import BoxSpec
from boxseg.data.formats import load_full, load_weak, open_dataset
from boxseg.data.split import SplitSpec, split_full_weak
from boxseg.inference import predict_logits
from boxseg.io import read_image, read_label_png, write_image
from boxseg.metrics import class_map
from boxseg.store import LogitsStore
from tests.conftest import TINY_TRAIN, run_cli

pytest.importorskip("segmentation_models_pytorch")

SPLIT = ["--num-full", "4", "--seed-split", "0"]
CPU = ["--device", "cpu", "--quiet"]
NETS = [
    ("deeplabv3plus", "resnet18"),
    ("unet", "resnet18"),
    ("fpn", "resnet18"),
    ("unet", "tu-convnext_atto"),
]
F16_MAX = float(np.finfo(np.float16).max)
ODD_SIZES = [(37, 45), (50, 38)]  # not divisible by 32 (nor 16), nor the export's 64x96


def net_flags(arch: str, encoder: str) -> list[str]:
    """--arch/--encoder, and a narrow decoder where the architecture reads --decoder-channels."""
    narrow = ["--decoder-channels", "16"] if arch == "deeplabv3plus" else []
    return ["--arch", arch, "--encoder", encoder, *narrow]


def smp_reference(arch: str, encoder: str, num_classes: int) -> torch.nn.Module:
    """smp's own model for `arch` over `encoder`, as the flags of `net_flags` ask for it."""
    import segmentation_models_pytorch as smp

    narrow = {"decoder_channels": 16} if arch == "deeplabv3plus" else {}
    return smp.create_model(
        arch, encoder_name=encoder, encoder_weights=None, classes=num_classes, **narrow
    )


def odd_images(data: Path, folder: Path) -> dict[str, np.ndarray]:
    """Val images resized to ODD_SIZES, written as PNGs into `folder`; stem -> RGB array."""
    ds = open_dataset(data)
    images = {}
    for k, (h, w) in enumerate(ODD_SIZES):
        image = ds.read_image("val", ds.ids("val")[k])
        images[f"odd{k}"] = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
        write_image(folder / f"odd{k}.png", images[f"odd{k}"])
    return images


@pytest.fixture(scope="module")
def smp_pipeline(tiny_data, tmp_path_factory) -> Callable[[str, str, object], dict[str, Path]]:
    """run(arch, encoder, capsys): train-anc -> gen-logits -> train-primary --logits (linear)
    through the CLI, once per network in this module; the paths of what each stage wrote."""
    done: dict[tuple[str, str], dict[str, Path]] = {}

    def run(arch: str, encoder: str, capsys) -> dict[str, Path]:
        if (arch, encoder) in done:
            return done[arch, encoder]
        root = tmp_path_factory.mktemp(f"{arch}_{encoder}")
        flags = [*net_flags(arch, encoder), *SPLIT, *TINY_TRAIN]
        code, _, err = run_cli(["train-anc", tiny_data, "--out", root / "anc", *flags], capsys)
        assert code == 0, err
        code, _, err = run_cli(
            [
                "gen-logits",
                tiny_data,
                "--model",
                root / "anc" / "model.pt",
                "--out",
                root / "w.zarr",
                *SPLIT,
                *CPU,
            ],
            capsys,
        )
        assert code == 0, err
        code, _, err = run_cli(
            [
                "train-primary",
                tiny_data,
                "--out",
                root / "primary",
                "--logits",
                root / "w.zarr",
                "--self-corr",
                "linear",
                *flags,
            ],
            capsys,
        )
        assert code == 0, err
        done[arch, encoder] = {
            "root": root,
            "anc": root / "anc" / "model.pt",
            "store": root / "w.zarr",
            "primary": root / "primary" / "model.pt",
        }
        return done[arch, encoder]

    return run


@pytest.mark.parametrize(("arch", "encoder"), NETS)
def test_whole_pipeline_with_an_smp_network(
    smp_pipeline, tiny_data, tmp_path, capsys, arch, encoder
):
    """Both nets are the smp network asked for, recorded so in model.pt; the store holds what
    the smp ancillary net says on W; eval and predict (on sizes the encoder's stride does not
    divide) run the smp primary."""
    run = smp_pipeline(arch, encoder, capsys)
    ds = open_dataset(tiny_data)
    k = ds.num_classes
    anc, anc_meta = load_model(run["anc"], kind="ancillary")
    primary, meta = load_model(run["primary"], kind="primary")
    for path, model in ((run["anc"], anc), (run["primary"], primary)):
        ckpt = read_checkpoint(path)
        assert ckpt["model"]["arch"] == arch
        assert ckpt["model"]["backbone"] == encoder
        assert type(model).__name__ == "SmpNet"
        config = json.loads((path.parent / "config.json").read_text())
        assert (config["model"]["arch"], config["model"]["backbone"]) == (arch, encoder)
    # the primary is exactly smp's network (same tensors, same shapes), the ancillary one adds
    # the box path on top of it
    want = {n: t.shape for n, t in smp_reference(arch, encoder, k).state_dict().items()}
    assert {n: t.shape for n, t in primary.state_dict().items()} == want
    assert primary.box_encoder is None and anc.box_encoder is not None and anc.box_read
    assert anc_meta["box_channels"] == k and set(want) - set(anc.state_dict()) <= {
        "segmentation_head.0.weight"  # widened for the box tensor (box_direct)
    }

    # the store: W's ids, every image done, K classes at stride 4, what the smp anc net says
    _, weak = split_full_weak(ds.ids("train"), SplitSpec("train", 4, 0))
    store = LogitsStore.open(run["store"])
    assert store.image_ids == weak and store.done_mask().all()
    assert store.logits.shape == (len(weak), k, 8, 8) and list(store.class_names) == list(
        ds.class_names
    )
    assert store.attrs["checkpoint_sha256"] == file_sha256(run["anc"])
    w = load_weak(ds, "train", weak[0], BoxSpec.from_dict(anc_meta["boxes"]))
    raw = predict_logits(anc, anc_meta, w.image, torch.device("cpu"), w.boxes, w.labels)
    # (a 3-step net's eval-mode logits can pass float16's range: the store saturates them)
    want = pool_logits(raw, 4).clamp(-F16_MAX, F16_MAX)
    torch.testing.assert_close(store.read(0), want, atol=1e-2, rtol=1e-2)
    lines = [
        json.loads(x) for x in (run["primary"].parent / "metrics.jsonl").read_text().splitlines()
    ]
    assert any(np.isfinite(x.get("loss_w", np.nan)) for x in lines)  # W's term was trained on

    # eval: a JSON report over the 4 val images of 32x32
    report = tmp_path / "eval.json"
    code, out, err = run_cli(
        ["eval", tiny_data, "--model", run["primary"], "--json", report, "--device", "cpu"], capsys
    )
    assert code == 0, err
    r = json.loads(report.read_text())
    assert isinstance(r["miou"], float) and 0.0 <= r["miou"] <= 100.0 and "mIoU" in out
    assert np.array(r["confusion"]).shape == (k, k)
    assert np.array(r["confusion"]).sum() == 4 * 32 * 32

    # predict on images whose sides the encoder's stride does not divide
    images = odd_images(tiny_data, tmp_path / "images")
    code, _, err = run_cli(
        ["predict", run["primary"], tmp_path / "images", "--out", tmp_path / "pred", *CPU], capsys
    )
    assert code == 0, err
    for stem, image in images.items():
        pred = read_label_png(tmp_path / "pred" / f"{stem}.png")
        assert pred.shape == image.shape[:2] and pred.max() < k
        assert read_image(tmp_path / "pred" / f"{stem}_overlay.png").shape == image.shape
        x = (torch.from_numpy(image).permute(2, 0, 1).float() / 255)[None]
        x = (x - torch.tensor(meta["mean"]).view(3, 1, 1)) / torch.tensor(meta["std"]).view(3, 1, 1)
        with torch.no_grad():
            logits = primary(x)
        assert logits.shape == (1, k, *image.shape[:2])
        assert np.array_equal(pred, class_map(logits[0]).numpy())


def test_unet_over_a_timm_convnext_takes_a_side_under_32():
    """A 27x45 image (eval --scales 0.75 of a 36-pixel image; predict of a thumbnail)."""
    from boxseg.models import ModelSpec, build_model

    net = build_model(ModelSpec("tu-convnext_atto", arch="unet"), 5).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, 27, 45)).shape == (1, 5, 27, 45)


FPN = ("fpn", "resnet18")


@pytest.mark.parametrize(
    ("arch", "flag", "refused"),
    [
        ("unet", "--aspp-channels", True),
        ("unet", "--decoder-channels", True),
        ("fpn", "--output-stride", True),
        ("deeplabv3plus", "--aspp-channels", True),
        ("deeplabv3plus", "--decoder-channels", False),
    ],
)
def test_a_width_the_architecture_does_not_read_is_refused(
    arch, flag, refused, tiny_data, tmp_path, capsys
):
    """smp's UNet and FPN take their own widths; a width flag they would ignore is one line,
    not a run that silently trains another network than the one asked for."""
    value = "8" if flag == "--output-stride" else "16"
    args = ["train-anc", tiny_data, "--out", tmp_path / "a", "--arch", arch, flag, value]
    code, _, err = run_cli([*args, "--num-full", "4", *TINY_TRAIN], capsys)
    if refused:
        assert code == 2 and err.strip() == f"boxseg: error: {flag}: not used with --arch {arch}"
    else:
        assert code == 0, err


@pytest.mark.parametrize("arch_from", ["file", "command line"])
def test_a_width_from_a_config_file_the_architecture_does_not_read_is_refused(
    arch_from, tiny_data, tmp_path, capsys
):
    """A width set in a --config file reaches the command as a default, not as a flag: UNet
    would ignore it while config.json and model.pt record it."""
    cfg = tmp_path / "anc.toml"
    arch_line = 'arch = "unet"\n' if arch_from == "file" else ""
    cfg.write_text(f"{arch_line}decoder-channels = 16\nnum-full = 4\n")
    flags = [] if arch_from == "file" else ["--arch", "unet"]
    out = tmp_path / "a"
    code, _, err = run_cli(
        ["train-anc", tiny_data, "--out", out, "--config", cfg, *flags, *TINY_TRAIN], capsys
    )
    assert code == 2 and err.strip() == (
        f"boxseg: error: --decoder-channels: not used with --arch unet (set in {cfg})"
    )
    assert not out.exists()


def test_arch_names_are_read_in_any_case(tiny_data, tmp_path, capsys):
    """smp lower-cases an architecture name; boxseg's checks read `UNet` as the same `unet`."""
    args = ["train-anc", tiny_data, "--out", tmp_path / "a", "--arch", "UNet"]
    code, _, err = run_cli([*args, "--decoder-channels", "16", *SPLIT, *TINY_TRAIN], capsys)
    assert (
        code == 2 and err.strip() == "boxseg: error: --decoder-channels: not used with --arch unet"
    )


@pytest.mark.parametrize("width", [[], ["--decoder-channels", "16"]])
def test_an_unknown_arch_is_named_before_the_data_scan_and_the_run_folder(
    width, tiny_data, tmp_path, capsys
):
    """A typo in --arch is the first thing said (not a width it makes look unused), and
    nothing is written: no run folder to clear before the corrected command."""
    out = tmp_path / "p"
    args = ["train-primary", tiny_data, "--out", out, "--arch", "unett", *width]
    code, _, err = run_cli([*args, *SPLIT, *TINY_TRAIN], capsys)
    line = err.strip()
    assert code == 2 and "\n" not in line
    assert line.startswith("boxseg: error: --arch unett: unknown (choose boxseg or one of ")
    assert "unet," in line and "deeplabv3plus" in line and "dpt" not in line
    assert not out.exists()


@pytest.mark.parametrize(
    ("arch", "world", "message"),
    [
        ("dpt", "1", "--arch dpt: needs a fixed input size"),
        ("pspnet", "2", "--arch pspnet: not supported under torchrun"),
    ],
)
@pytest.mark.parametrize("stage", ["train-anc", "train-primary"])
def test_an_unsupported_arch_is_refused_before_the_run_folder(
    stage, arch, world, message, tiny_data, tmp_path, capsys, monkeypatch
):
    """dpt, and pspnet under torchrun (WORLD_SIZE > 1), are refused in one line before any
    file is written, so the corrected command can use the same --out."""
    monkeypatch.setenv("WORLD_SIZE", world)
    out = tmp_path / "run"
    code, _, err = run_cli(
        [stage, tiny_data, "--out", out, "--arch", arch, *SPLIT, *TINY_TRAIN], capsys
    )
    assert code == 2 and err.strip().startswith(f"boxseg: error: {message}")
    assert "\n" not in err.strip() and not out.exists()


def test_online_ancillary_with_an_smp_network(smp_pipeline, tiny_data, tmp_path, capsys):
    """train-primary --anc-model (no store): the smp ancillary net runs on each W crop."""
    run = smp_pipeline(*FPN, capsys)
    code, _, err = run_cli(
        [
            "train-primary",
            tiny_data,
            "--out",
            tmp_path / "o",
            "--anc-model",
            run["anc"],
            "--self-corr",
            "linear",
            *net_flags(*FPN),
            *SPLIT,
            *TINY_TRAIN,
        ],
        capsys,
    )
    assert code == 0, err
    config = json.loads((tmp_path / "o" / "config.json").read_text())
    assert config["weak_source"] == "online" and config["model"]["arch"] == "fpn"
    lines = [json.loads(x) for x in (tmp_path / "o" / "metrics.jsonl").read_text().splitlines()]
    losses_w = [x["loss_w"] for x in lines if "loss_w" in x]
    assert losses_w and all(np.isfinite(v) and v > 0 for v in losses_w)
    assert read_checkpoint(tmp_path / "o" / "model.pt")["model"]["arch"] == "fpn"


def test_conv_self_correction_with_smp_networks(smp_pipeline, tiny_data, tmp_path, capsys):
    """The paper's recipe: an smp ancillary net on half of F (stage 1), its store, then the
    primary and g on F (stage 2) and on F + W (stage 3), without --allow-full-anc."""
    flags = [*net_flags(*FPN), *SPLIT, *TINY_TRAIN]
    code, _, err = run_cli(
        ["train-anc", tiny_data, "--out", tmp_path / "half", "--full-fraction", "0.5", *flags],
        capsys,
    )
    assert code == 0, err
    half = read_checkpoint(tmp_path / "half" / "model.pt")
    assert half["trained_on"]["full_fraction"] == 0.5 and half["trained_on"]["num_images"] == 2
    code, _, err = run_cli(
        [
            "gen-logits",
            tiny_data,
            "--model",
            tmp_path / "half" / "model.pt",
            "--out",
            tmp_path / "w.zarr",
            *SPLIT,
            *CPU,
        ],
        capsys,
    )
    assert code == 0, err
    code, _, err = run_cli(
        [
            "train-primary",
            tiny_data,
            "--out",
            tmp_path / "conv",
            "--logits",
            tmp_path / "w.zarr",
            "--anc-model",
            tmp_path / "half" / "model.pt",
            "--self-corr",
            "conv",
            "--conv-hidden",
            "8",
            "--conv-warmup",
            "2",
            *flags,
        ],
        capsys,
    )
    assert code == 0, err
    config = json.loads((tmp_path / "conv" / "config.json").read_text())
    assert (config["iters"], config["w_steps"], config["stage2_steps"]) == (5, 3, 2)
    lines = [json.loads(x) for x in (tmp_path / "conv" / "metrics.jsonl").read_text().splitlines()]
    assert any(x.get("stage") == 3 and "loss_g" in x and "loss_w" in x for x in lines)
    ckpt = read_checkpoint(tmp_path / "conv" / "model.pt")
    assert ckpt["self_corr"] == "conv" and ckpt["model"]["arch"] == "fpn"
    assert ckpt["merger_state_dict"]["net.0.weight"].shape[:2] == (8, 2 * 5)
    model, _ = load_model(tmp_path / "conv" / "model.pt", kind="primary")
    assert type(model).__name__ == "SmpNet" and model.box_encoder is None


@torch.no_grad()
def tta_by_hand(model: torch.nn.Module, meta: dict, image: np.ndarray, scales) -> torch.Tensor:
    """Test-time augmentation as boxseg/inference.py documents it, written out from the
    model's forward: the normalised image resized to each scale (bilinear) and mirrored, each
    output mirrored back and resized to H x W, the log of the mean of their softmaxes."""
    mean, std = (torch.tensor(meta[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    x = (torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255 - mean) / std
    h, w = image.shape[:2]
    probs = []
    for scale in scales:
        xs = F.interpolate(x, size=(round(h * scale), round(w * scale)), mode="bilinear")
        for mirrored in (False, True):
            out = model(xs.flip(-1), None).flip(-1) if mirrored else model(xs, None)
            out = F.interpolate(out.float(), size=(h, w), mode="bilinear")
            probs.append(out.softmax(1)[0])
    return torch.stack(probs).mean(0).log()


def test_eval_with_test_time_augmentation_on_an_smp_primary(
    smp_pipeline, tiny_data, tmp_path, capsys
):
    """eval --flip --scales: the saved predictions are the argmax of predict_logits' TTA, which
    equals the mean of the flipped and rescaled (24 and 40 pixels: not multiples of the
    stride) smp outputs' softmaxes computed by hand (`tta_by_hand`); the report's confusion
    matrix is the one of those hand-made predictions."""
    run = smp_pipeline(*FPN, capsys)
    report, preds = tmp_path / "tta.json", tmp_path / "preds"
    code, _, err = run_cli(
        [
            "eval",
            tiny_data,
            "--model",
            run["primary"],
            "--flip",
            "--scales",
            "0.75,1.0,1.25",
            "--json",
            report,
            "--save-pred",
            preds,
            *CPU,
        ],
        capsys,
    )
    assert code == 0, err
    r = json.loads(report.read_text())
    assert isinstance(r["miou"], float) and 0.0 <= r["miou"] <= 100.0
    assert np.array(r["confusion"]).sum() == 4 * 32 * 32
    model, meta = load_model(run["primary"], kind="primary")
    ds = open_dataset(tiny_data)
    k, scales = ds.num_classes, (0.75, 1.0, 1.25)
    conf = np.zeros(k * k, np.int64)
    for image_id in ds.ids("val"):
        image = ds.read_image("val", image_id)
        logits = predict_logits(model, meta, image, torch.device("cpu"), scales=scales, flip=True)
        want = tta_by_hand(model, meta, image, scales)
        torch.testing.assert_close(logits, want, rtol=1e-5, atol=1e-5)
        plain = predict_logits(model, meta, image, torch.device("cpu"))
        assert not torch.allclose(plain.log_softmax(0), want, atol=1e-3)  # TTA changed them
        saved = read_label_png(preds / f"{image_id}.png")
        assert np.array_equal(saved, class_map(logits).numpy())
        mask = load_full(ds, "val", image_id, BoxSpec(), with_boxes=False).mask.astype(np.int64)
        keep = mask != 255
        conf += np.bincount(mask[keep] * k + class_map(want).numpy()[keep], minlength=k * k)
    assert r["confusion"] == conf.reshape(k, k).tolist()


def test_rank_and_viz_with_an_smp_primary(smp_pipeline, tiny_data, tmp_path, capsys):
    """rank --model: `disagree` is the share of pixels where the smp primary's argmax differs
    from the store's pseudo-label; viz --model draws one picture per W image, with q."""
    run = smp_pipeline(*FPN, capsys)
    code, _, err = run_cli(
        [
            "rank",
            tiny_data,
            "--logits",
            run["store"],
            "--model",
            run["primary"],
            "--out",
            tmp_path / "r.csv",
            *SPLIT,
            *CPU,
        ],
        capsys,
    )
    assert code == 0, err
    rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    store = LogitsStore.open(run["store"])
    assert sorted(r["id"] for r in rows) == sorted(store.image_ids)
    model, meta = load_model(run["primary"], kind="primary")
    ds = open_dataset(tiny_data)
    for row in rows:
        i = store.index(row["id"])
        mine = class_map(
            predict_logits(model, meta, ds.read_image("train", row["id"]), torch.device("cpu"))
        )
        pseudo = class_map(store.read_full(i))
        assert float(row["disagree"]) == pytest.approx(
            (mine != pseudo).float().mean().item(),
            abs=1e-5,  # the CSV's 6 digits
        )

    code, _, err = run_cli(
        [
            "viz",
            tiny_data,
            "--logits",
            run["store"],
            "--out",
            tmp_path / "v",
            "--num",
            "2",
            "--device",
            "cpu",
        ],
        capsys,
    )
    assert code == 0, err
    code, _, err = run_cli(
        [
            "viz",
            tiny_data,
            "--logits",
            run["store"],
            "--out",
            tmp_path / "vm",
            "--model",
            run["primary"],
            "--num",
            "2",
            "--device",
            "cpu",
        ],
        capsys,
    )
    assert code == 0, err
    for image_id in store.image_ids[:2]:
        plain = read_image(tmp_path / "v" / f"{image_id}.png")
        with_q = read_image(tmp_path / "vm" / f"{image_id}.png")
        assert plain.shape[0] >= 32 and with_q.shape[0] == plain.shape[0]
        assert with_q.shape[1] > plain.shape[1]  # the primary's q: one more panel
    assert sorted(p.name for p in (tmp_path / "vm").glob("*.png")) == [
        f"{i}.png" for i in store.image_ids[:2]
    ]


def test_onnx_export_of_an_smp_primary_matches_predict(smp_pipeline, tiny_data, tmp_path, capsys):
    """The exported smp primary gives PyTorch's logits, and the same argmax on every pixel, at
    sizes and batches the export never saw (sides not multiples of 32), and `boxseg predict`'s
    class maps on images of such sizes."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from boxseg.export import TOLERANCE

    run = smp_pipeline(*FPN, capsys)
    out = tmp_path / "p.onnx"
    code, stdout, err = run_cli(["export", run["primary"], "--out", out], capsys)
    assert code == 0, err
    assert "any image size" in stdout and "onnxruntime matches PyTorch" in stdout
    model, meta = load_model(run["primary"], kind="primary")
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(0)
    for shape in [(1, 3, 40, 56), (3, 3, 97, 65), (2, 3, 33, 127)]:
        x = torch.randn(*shape, generator=g)
        got = session.run(None, {"image": x.numpy()})[0]
        with torch.no_grad():
            want = model(x).numpy()
        assert got.shape == want.shape == (shape[0], len(meta["class_names"]), *shape[2:])
        assert np.abs(got - want).max() <= TOLERANCE
        assert (got.argmax(1) == want.argmax(1)).all()  # 100% argmax agreement

    images = odd_images(tiny_data, tmp_path / "images")
    code, _, err = run_cli(
        ["predict", run["primary"], tmp_path / "images", "--out", tmp_path / "pred", *CPU], capsys
    )
    assert code == 0, err
    mean, std = np.array(meta["mean"], np.float32), np.array(meta["std"], np.float32)
    for stem, image in images.items():  # as a deployment would feed it: RGB/255, normalised
        x = ((image.astype(np.float32) / 255 - mean) / std).transpose(2, 0, 1)[None]
        got = session.run(None, {"image": np.ascontiguousarray(x)})[0][0].argmax(0)
        assert np.array_equal(got, read_label_png(tmp_path / "pred" / f"{stem}.png"))
