"""Users' photos (issue 37): one orientation rule for every reader, the displayed frame (EXIF
orientation applied, as labelling tools show photos and export boxes and masks), and an image
is bad when it does not decode, not when its tail looks unusual."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from boxseg.data import validate
from boxseg.data.boxes import BoxSpec
from boxseg.data.formats import load_full, load_weak, open_dataset
from boxseg.data.split import SplitSpec
from boxseg.data.validate import check_image_file
from boxseg.engine import TrainConfig
from boxseg.errors import BoxsegError
from boxseg.io import read_image, read_label_png, write_image, write_label_png
from boxseg.models import ModelSpec
from boxseg.store import LogitsStore
from tests.conftest import TINY_MODEL, TINY_TRAIN, run_cli

CLASSES = ["background", "cat", "dog"]
H, W = 48, 32  # the displayed (portrait) frame; stored 32 high and 48 wide under tag 6
# the inverse of each orientation's turn: stored pixels from the displayed ones
TO_STORED = {
    1: lambda a: a,
    3: lambda a: cv2.rotate(a, cv2.ROTATE_180),
    6: lambda a: cv2.rotate(a, cv2.ROTATE_90_COUNTERCLOCKWISE),
    8: lambda a: cv2.rotate(a, cv2.ROTATE_90_CLOCKWISE),
}
# each orientation's turn, written out here (not boxseg's table): displayed pixels from stored
TO_DISPLAYED = {
    3: lambda a: cv2.rotate(a, cv2.ROTATE_180),
    6: lambda a: cv2.rotate(a, cv2.ROTATE_90_CLOCKWISE),
    8: lambda a: cv2.rotate(a, cv2.ROTATE_90_COUNTERCLOCKWISE),
}


def save_photo(path: Path, displayed: np.ndarray, tag: int, fmt: str = "JPEG") -> None:
    """`displayed` (RGB) stored as a camera stores it: pixels turned back, EXIF tag `tag`."""
    exif = Image.Exif()
    exif[0x0112] = tag
    Image.fromarray(TO_STORED[tag](displayed)).save(path, fmt, exif=exif, quality=95)


def scene(k: int) -> tuple[np.ndarray, np.ndarray, list[tuple[int, list[int]]]]:
    """Image k in the displayed frame: a cat and a dog rectangle; its mask and COCO boxes."""
    rng = np.random.default_rng(k)
    image = rng.integers(30, 60, (H, W, 3)).astype(np.uint8)
    mask = np.zeros((H, W), np.uint8)
    cat, dog = [2 + k % 3, 3, 14, 18], [12, 26 + k % 4, 16, 18]  # [x, y, w, h]
    for label, (x, y, bw, bh), colour in ((1, cat, (220, 60, 40)), (2, dog, (40, 70, 210))):
        image[y : y + bh, x : x + bw] = colour
        mask[y : y + bh, x : x + bw] = label
    return image, mask, [(1, cat), (2, dog)]


def photo_folder(root: Path, tag: int = 6, n_train: int = 8, twin_of: Path | None = None) -> Path:
    """A folder dataset of phone photos: JPEGs carrying EXIF orientation `tag`, masks (images
    0-3 and the val images) and boxes.json in the displayed frame. `twin_of`: the same
    dataset with each image stored upright as PNG, with exactly the pixels `twin_of`'s JPEG
    (tag `tag`) decodes to, turned by this file's own `TO_DISPLAYED` (only the container
    differs, and boxseg's reader is not what made the twin)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    doc = {
        "images": [],
        "annotations": [],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
    }
    stems = [f"photo{k}" for k in range(n_train + 2)]
    for k, stem in enumerate(stems):
        image, mask, boxes = scene(k)
        if twin_of is None:
            name = f"{stem}.jpg"
            save_photo(root / "images" / name, image, tag)
        else:
            name = f"{stem}.png"
            stored = cv2.imread(
                str(twin_of / "images" / f"{stem}.jpg"),
                cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION,
            )
            upright = cv2.cvtColor(TO_DISPLAYED[tag](stored), cv2.COLOR_BGR2RGB)
            write_image(root / "images" / name, upright)
        doc["images"].append({"id": k, "file_name": name, "width": W, "height": H})
        doc["annotations"] += [
            {"id": 10 * k + j, "image_id": k, "category_id": label, "bbox": bbox}
            for j, (label, bbox) in enumerate(boxes)
        ]
        if k < 4 or k >= n_train:
            write_label_png(root / "masks" / f"{stem}.png", mask)
    (root / "boxes.json").write_text(json.dumps(doc))
    (root / "train.txt").write_text("\n".join(stems[:n_train]) + "\n")
    (root / "val.txt").write_text("\n".join(stems[n_train:]) + "\n")
    return root


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- one frame for sizes, pixels, masks and boxes ---


@pytest.mark.parametrize("tag", [3, 6, 8])
def test_size_check_and_pixels_are_in_the_displayed_frame(tmp_path, tag):
    displayed, _, boxes = scene(0)
    path = tmp_path / "p.jpg"
    save_photo(path, displayed, tag)
    assert check_image_file(path) == (H, W)  # the displayed size, not the stored 32 x 48
    assert check_image_file(path, displayed=False) == TO_STORED[tag](displayed).shape[:2]
    pixels = read_image(path)
    assert pixels.shape == (H, W, 3)
    for (label, (x, y, bw, bh)), channel in zip(boxes, (0, 2), strict=True):
        inside = pixels[y + 2 : y + bh - 2, x + 2 : x + bw - 2, channel]  # (JPEG edges aside)
        assert inside.mean() > 180, f"the {CLASSES[label]} is not where the photo shows it"
    with Image.open(path) as im:  # exactly what PIL's exif_transpose shows
        np.testing.assert_array_equal(pixels, np.asarray(ImageOps.exif_transpose(im)))


@pytest.mark.parametrize("tag", range(1, 9))
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_every_orientation_turns_as_opencv_turns_it(tmp_path, tag, fmt):
    """read_image applies the orientation by boxseg's one rule: the same pixels as OpenCV's
    IMREAD_COLOR, and the size check agrees with them."""
    stored = np.random.default_rng(tag).integers(0, 255, (20, 36, 3)).astype(np.uint8)
    path = tmp_path / f"p.{fmt.lower()}"
    exif = Image.Exif()
    exif[0x0112] = tag
    Image.fromarray(stored).save(path, fmt, exif=exif, quality=95)
    opencv = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(read_image(path), opencv)
    assert check_image_file(path) == opencv.shape[:2]


def test_a_mask_is_read_as_stored_even_with_an_orientation_tag(tmp_path):
    mask = np.zeros((20, 36), np.uint8)
    mask[:5, :9] = 2
    path = tmp_path / "m.png"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(mask).save(path, "PNG", exif=exif)
    np.testing.assert_array_equal(read_label_png(path), mask)  # IMREAD_UNCHANGED: no turn
    assert check_image_file(path, displayed=False) == (20, 36)


def test_yolo_boxes_scale_by_the_displayed_size(tmp_path):
    """YOLO's fractions are of the frame the tool showed: a box on the right half of the
    portrait photo covers x 16..32, y 0..48 of the 32 x 48 displayed image."""
    root = tmp_path / "y"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    save_photo(root / "images" / "p.jpg", scene(0)[0], 6)
    (root / "labels" / "p.txt").write_text("1 0.75 0.5 0.5 1.0\n")
    (root / "train.txt").write_text("p\n")
    sample = load_weak(open_dataset(root), "train", "p", BoxSpec())
    assert sample.image.shape == (H, W, 3)
    np.testing.assert_allclose(sample.boxes, [[16, 0, 32, 48]])


def test_masks_and_boxes_in_the_displayed_frame_fit_the_photo(tmp_path):
    root = photo_folder(tmp_path / "f")
    ds = open_dataset(root)
    assert validate.check_sample(ds, "train", "photo0", True) == (2, 0)
    s = load_full(ds, "train", "photo0", BoxSpec())
    assert s.image.shape == (H, W, 3) and s.mask.shape == (H, W)
    # the cat's box holds the cat's mask and the cat's red pixels
    x1, y1, x2, y2 = s.boxes[0].astype(int)
    assert (s.mask[y1:y2, x1:x2] == 1).all() and s.image[y1:y2, x1:x2, 0].mean() > 180


def test_a_mask_in_the_stored_frame_is_refused_with_the_reason(tmp_path):
    root = photo_folder(tmp_path / "f")
    stored = cv2.rotate(read_label_png(root / "masks" / "photo0.png"), cv2.ROTATE_90_CLOCKWISE)
    write_label_png(root / "masks" / "photo0.png", stored)  # 48 wide, 32 high: the stored frame
    with pytest.raises(
        BoxsegError,
        match=r"photo0.png: mask is 48x32 but its image is 32x48; "
        "the image has EXIF orientation 6",
    ):
        validate.check_sample(open_dataset(root), "train", "photo0", True)


def test_a_coco_size_of_the_stored_frame_is_refused_with_the_reason(tmp_path):
    root = photo_folder(tmp_path / "f")
    doc = json.loads((root / "boxes.json").read_text())
    doc["images"][5] |= {"width": H, "height": W}  # what a tool reading stored sizes writes
    (root / "boxes.json").write_text(json.dumps(doc))
    with pytest.raises(
        BoxsegError,
        match="image photo5 is 48x32 there, but .*photo5.jpg is 32x48 .*EXIF orientation 6",
    ):
        open_dataset(root).read_boxes("train", "photo5", BoxSpec())


def test_a_portrait_photo_folder_runs_through_every_stage(tmp_path, capsys):
    root = photo_folder(tmp_path / "f")
    common = [*TINY_MODEL, *TINY_TRAIN]
    steps = [
        ["train-anc", root, "--out", tmp_path / "a", *common],
        [
            "gen-logits",
            root,
            "--model",
            tmp_path / "a" / "model.pt",
            "--out",
            tmp_path / "w.zarr",
            "--device",
            "cpu",
            "--quiet",
        ],
        [
            "train-primary",
            root,
            "--out",
            tmp_path / "p",
            "--logits",
            tmp_path / "w.zarr",
            "--self-corr",
            "linear",
            *common,
        ],
        [
            "eval",
            root,
            "--model",
            tmp_path / "a" / "model.pt",
            "--json",
            tmp_path / "ea.json",
            "--save-pred",
            tmp_path / "ev",
        ],
        ["eval", root, "--model", tmp_path / "p" / "model.pt", "--json", tmp_path / "ep.json"],
        [
            "predict",
            tmp_path / "p" / "model.pt",
            root / "images",
            "--out",
            tmp_path / "pred",
            "--device",
            "cpu",
            "--quiet",
        ],
    ]
    for argv in steps:
        code, _, err = run_cli(argv, capsys)
        assert code == 0, f"{argv[0]}: {err}"
    store = LogitsStore.open(tmp_path / "w.zarr")
    assert store.image_ids == [f"photo{k}" for k in range(4, 8)]
    assert np.asarray(store.sizes).tolist() == [[H, W]] * 4  # recorded in the displayed frame
    for name in ("ea.json", "ep.json"):
        assert json.loads((tmp_path / name).read_text())["split"] == "val"
    assert read_label_png(tmp_path / "ev" / "photo8.png").shape == (H, W)
    assert read_label_png(tmp_path / "pred" / "photo0.png").shape == (H, W)
    assert read_image(tmp_path / "pred" / "photo0_overlay.png").shape == (H, W, 3)


@pytest.mark.parametrize("tag", [3, 6, 8])
def test_a_tagged_jpeg_gives_what_the_same_pixels_upright_give(tmp_path, one_thread, tag):
    """The issue's "must show", for each turn a camera records: JPEGs carrying orientation
    `tag` give the same ancillary weights and the same W pseudo-labels as the very pixels
    they decode to, stored upright as PNG, and the store records sizes and boxes in the
    displayed frame. Tag 3 keeps the size, so only the pixels can show a missed turn."""
    from boxseg.checkpoint import load_model
    from boxseg.gen_logits import GenLogitsOptions, gen_logits
    from boxseg.train_anc import AncOptions, train_anc

    jpeg = photo_folder(tmp_path / "jpeg", tag=tag)
    png = photo_folder(tmp_path / "png", tag=tag, twin_of=jpeg)
    assert check_image_file(png / "images" / "photo0.png") == (H, W)
    shown = {  # boxes.json's boxes, xyxy in the displayed frame
        f"photo{k}": [[x, y, x + bw, y + bh] for _, (x, y, bw, bh) in scene(k)[2]]
        for k in range(4, 8)
    }
    results = []
    for root in (jpeg, png):
        out = tmp_path / f"{root.name}_run"
        cfg = TrainConfig(iters=2, batch_size=2, crop=32, device="cpu")
        spec = ModelSpec("mobilenet_v3_large", 16, 16, 16, 8)  # the smallest checkpoint to save
        train_anc(AncOptions(root, out / "anc", SplitSpec("train"), spec, cfg), quiet=True)
        opts = GenLogitsOptions(
            root,
            str(out / "w.zarr"),
            SplitSpec("train"),
            out / "anc" / "model.pt",
            device="cpu",
            workers=0,
        )
        gen_logits(opts, quiet=True)
        store = LogitsStore.open(out / "w.zarr")
        assert np.asarray(store.sizes).tolist() == [[H, W]] * 4, root.name
        for i, image_id in enumerate(store.image_ids):
            boxes, labels = store.read_boxes(i)
            assert boxes.tolist() == shown[image_id] and labels.tolist() == [1, 2], image_id
        weights = load_model(out / "anc" / "model.pt", device="cpu")[0].state_dict()
        results.append((store.image_ids, np.asarray(store.logits[:]), weights))
    (ids_j, logits_j, weights_j), (ids_p, logits_p, weights_p) = results
    assert ids_j == ids_p == [f"photo{k}" for k in range(4, 8)]
    np.testing.assert_array_equal(logits_j, logits_p)
    assert weights_j.keys() == weights_p.keys()
    for name, tensor in weights_j.items():
        assert torch.equal(tensor, weights_p[name]), name


# --- an image is bad when it does not decode ---


def _jpeg(tmp_path: Path, name: str = "p.jpg") -> Path:
    path = tmp_path / name
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 80, 3)).astype(np.uint8)).save(path, quality=90)
    return path


def test_bytes_after_the_end_of_a_jpeg_are_fine(tmp_path):
    path = _jpeg(tmp_path)
    path.write_bytes(path.read_bytes() + os.urandom(1024))  # a Motion Photo's video, say
    assert check_image_file(path) == (64, 80)
    png = tmp_path / "p.png"
    write_image(png, read_image(path))
    png.write_bytes(png.read_bytes() + b"\x00" * 1024)
    assert check_image_file(png) == (64, 80)


def test_a_multi_picture_jpeg_is_its_first_picture(tmp_path):
    first, second = (Image.new("RGB", (80, 64), c) for c in ("red", "blue"))
    path = tmp_path / "mpo.jpg"
    first.save(path, "MPO", save_all=True, append_images=[second])
    assert check_image_file(path) == (64, 80)
    assert (read_image(path)[..., 0] > 200).all()


@pytest.mark.parametrize("suffix, keep", [(".jpg", 0.5), (".jpg", 0.95), (".png", 0.5)])
def test_a_file_cut_short_is_refused(tmp_path, suffix, keep):
    path = _jpeg(tmp_path)
    if suffix == ".png":
        write_image(path.with_suffix(".png"), read_image(path))
        path = path.with_suffix(".png")
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    fmt = "JPEG" if suffix == ".jpg" else "PNG"
    with pytest.raises(BoxsegError, match=f"p{suffix}: truncated {fmt} file"):
        check_image_file(path)


def test_a_png_with_a_damaged_chunk_is_refused(tmp_path):
    path = tmp_path / "p.png"
    write_image(path, read_image(_jpeg(tmp_path)))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BoxsegError, match="p.png: corrupt PNG file, it does not decode"):
        check_image_file(path)


def test_a_cut_photo_stops_the_cli_with_one_line(tmp_path, capsys):
    root = photo_folder(tmp_path / "f", tag=1)  # upright photos
    junk = root / "images" / "photo1.jpg"
    junk.write_bytes(junk.read_bytes() + os.urandom(1024))  # passes
    cut = root / "images" / "photo2.jpg"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    code, _, err = run_cli(
        ["train-anc", root, "--out", tmp_path / "a", *TINY_MODEL, *TINY_TRAIN], capsys
    )
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("boxseg: error: "), err
    assert f"{cut}: truncated JPEG file" in lines[0] and "--skip-bad" in lines[0]


def test_a_file_is_decoded_once_per_version(tmp_path, monkeypatch):
    """Stages checking the same files in one process decode each once, and a rewritten file
    is checked anew."""
    path = _jpeg(tmp_path)
    calls = []
    real = validate._decode
    monkeypatch.setattr(validate, "_decode", lambda im: calls.append(im) or real(im))
    for _ in range(3):
        assert check_image_file(path) == (64, 80)
    assert len(calls) == 1
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    with pytest.raises(BoxsegError, match="truncated JPEG"):
        check_image_file(path)


def test_readers_read_headers_and_never_decode(tmp_path, monkeypatch):
    """A reader's size lookup (every sample, in every loader process and rank, with no check
    remembered there) reads the image's header only: COCO and YOLO boxes are fitted to the
    displayed size with no decode; the up-front check is where an image is decoded."""
    coco = photo_folder(tmp_path / "coco", n_train=2)
    yolo = tmp_path / "yolo"
    (yolo / "labels").mkdir(parents=True)
    shutil.copytree(coco / "images", yolo / "images")
    shutil.copy(coco / "classes.txt", yolo / "classes.txt")
    (yolo / "train.txt").write_text("photo0\nphoto1\n")
    for k in range(2):
        (yolo / "labels" / f"photo{k}.txt").write_text("1 0.75 0.5 0.5 1.0\n")
    calls = []
    real = validate._decode
    monkeypatch.setattr(validate, "_decode", lambda im: calls.append(im) or real(im))
    for root, want in ((coco, [[2, 3, 16, 21], [12, 26, 28, 44]]), (yolo, [[16, 0, 32, 48]])):
        ds = open_dataset(root)
        boxes, _ = ds.read_boxes("train", "photo0", BoxSpec())
        assert boxes.tolist() == want, root.name  # in the displayed frame, from the header
        assert load_weak(ds, "train", "photo1", BoxSpec()).image.shape == (H, W, 3)
    assert calls == [], "a reader decoded an image to learn its size"
    assert validate.check_sample(open_dataset(coco), "train", "photo0", False) == (2, 0)
    assert len(calls) == 1  # the up-front check decodes
    open_dataset(coco).read_boxes("train", "photo0", BoxSpec())
    assert len(calls) == 1


def test_gen_logits_names_a_header_that_disagrees_with_the_pixels(tmp_path, monkeypatch):
    """The store records each W image's size from its header; pixels of another size mean the
    file changed during the run (or lies), which --overwrite would not mend."""
    from boxseg import gen_logits as gl
    from boxseg.checkpoint import save_model
    from boxseg.models import build_model
    from boxseg.run_dir import model_meta

    root = photo_folder(tmp_path / "f")
    spec = ModelSpec("resnet18", 16, 16, 16, 8)
    meta = model_meta("primary", spec, open_dataset(root), BoxSpec(), None, (0.5,) * 3, (0.25,) * 3)
    save_model(tmp_path / "m.pt", build_model(spec, len(CLASSES)).eval(), meta)
    monkeypatch.setattr(gl, "image_size", lambda path: (W, H))  # a header that lies
    with pytest.raises(BoxsegError) as err:
        opts = gl.GenLogitsOptions(
            root,
            str(tmp_path / "w.zarr"),
            SplitSpec("train"),
            tmp_path / "m.pt",
            device="cpu",
            workers=0,
        )
        gl.gen_logits(opts, quiet=True)
    message = str(err.value)
    assert "photo4.jpg: its pixels are 32x48 but its header said 48x32" in message
    assert "--overwrite" not in message
