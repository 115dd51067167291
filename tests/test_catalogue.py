"""The catalogue of malformed inputs (docs/reliability.md): each case is one command line on
broken data, a broken store or checkpoint, or a bad option, and must end with exit code 2 and
one line on stderr naming the file (or option) and the problem; no traceback."""

from __future__ import annotations

import errno
import os
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from boxseg.io import write_label_png
from boxseg.store import LogitsStore
from tests.conftest import TINY_MODEL, TINY_TRAIN, run_cli
from tests.data.test_box_files import XML_BAD, YOLO_BAD, bad_box_file, write_box_folder


@dataclass
class Ctx:
    tmp: Path
    pipeline: dict
    monkeypatch: pytest.MonkeyPatch

    def data(self) -> Path:
        """A private copy of the tiny dataset to break."""
        d = self.tmp / "d"
        if not d.exists():
            shutil.copytree(self.pipeline["data"], d)
        return d

    def first(self, split: str = "train") -> str:
        return (self.data() / f"{split}.txt").read_text().split()[0]

    def weak_id(self) -> str:
        return LogitsStore.open(self.pipeline["store"]).image_ids[0]

    def store(self) -> Path:
        s = self.tmp / "w.zarr"
        if not s.exists():
            shutil.copytree(self.pipeline["store"], s)
        return s

    def anc(self, *extra) -> list:
        """train-anc on all 12 train images (so every train file is in F)."""
        return ["train-anc", self.data(), "--out", self.tmp / "r", "--num-full", "12",
                *TINY_MODEL, *TINY_TRAIN, *extra]  # fmt: skip

    def primary(self, *extra) -> list:
        return ["train-primary", self.data(), "--out", self.tmp / "p", "--num-full", "4",
                "--logits", self.store(), *TINY_MODEL, *TINY_TRAIN, *extra]  # fmt: skip

    def gen(self, *extra) -> list:
        out = self.tmp / "new.zarr"
        return ["gen-logits", self.data(), "--model", self.pipeline["anc"], "--out", out,
                "--num-full", "4", "--device", "cpu", "--quiet", *extra]  # fmt: skip


def _write_garbage(path: Path) -> None:
    path.write_bytes(b"this is not an image at all" * 3)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _image(c: Ctx, split="train") -> Path:
    return c.data() / split / f"{c.first(split)}.png"


def _mask(c: Ctx, split="train") -> Path:
    return c.data() / f"{split}annot" / f"{c.first(split)}.png"


def _store_attr(c: Ctx, key: str, value) -> Path:
    s = LogitsStore.open(c.store(), mode="r+")
    s.group.attrs[key] = value
    return c.store()


def _disk_full(c: Ctx) -> list:
    import boxseg.io

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    c.monkeypatch.setattr(boxseg.io.os, "fsync", no_space)
    return c.anc()


def _resume_state(c: Ctx, content: bytes | None) -> list:
    from boxseg.outputs import output_dir

    run = output_dir(c.tmp / "r", "train-anc")  # a run directory, as train-anc makes it
    if content is None:  # a real state, but of a 6-step run
        from boxseg.engine import TRAIN_STATE

        torch.save({"format": TRAIN_STATE, "step": 2, "iters": 6}, run / "last.pt")
    else:
        (run / "last.pt").write_bytes(content)
    return c.anc("--resume")


def _short_weights(c: Ctx) -> list:
    (c.tmp / "w.txt").write_text("1 2 3\n")
    return c.primary("--class-weights", c.tmp / "w.txt")


def _half_written(c: Ctx) -> list:
    s = LogitsStore.open(c.store(), mode="r+")
    s.done[3] = False
    return c.primary()


def _other_size(c: Ctx) -> list:
    from boxseg.io import read_image, write_image

    wid = c.weak_id()
    img = read_image(c.data() / "train" / f"{wid}.png")
    write_image(c.data() / "train" / f"{wid}.png", np.pad(img, ((0, 8), (0, 8), (0, 0))))
    return c.primary()


def _other_classes_model(c: Ctx) -> list:
    names = (c.data() / "classes.txt").read_text().split("\n")
    (c.data() / "classes.txt").write_text("\n".join(reversed([n for n in names if n])))
    return c.gen()


def _foreign_zarr(c: Ctx) -> list:
    import zarr

    zarr.open_group(str(c.tmp / "new.zarr"), mode="w").create_array("x", shape=(2,), dtype="i1")
    return c.gen()


def _primary_model(c: Ctx) -> list:
    code, _, err = run_cli(c.primary(), capsys=None)
    assert code == 0, err
    # (gen-logits takes a primary model: self-training targets)
    return ["train-primary", c.data(), "--out", c.tmp / "q", "--num-full", "4", "--anc-model",
            c.tmp / "p" / "model.pt", *TINY_MODEL, *TINY_TRAIN]  # fmt: skip


def _truncated_checkpoint(c: Ctx) -> list:
    ckpt = c.tmp / "half.pt"
    shutil.copy(c.pipeline["anc"], ckpt)
    _truncate(ckpt)
    return ["gen-logits", c.data(), "--model", ckpt, "--out", c.tmp / "x.zarr", "--num-full", "4"]


def _not_writable(c: Ctx) -> list:
    (c.tmp / "a_file").write_text("x")
    return ["train-anc", c.data(), "--out", c.tmp / "a_file" / "run", "--num-full", "12",
            *TINY_MODEL, *TINY_TRAIN]  # fmt: skip


def _folder_with_box(c: Ctx, bbox=None, category=None) -> list:
    """train-anc on a folder-layout dataset whose boxes.json has one bad entry."""
    import json

    from tests.data.test_folder import write_folder

    root = write_folder(c.tmp / "f")
    doc = json.loads((root / "boxes.json").read_text())
    if bbox is not None:
        doc["annotations"][0]["bbox"] = bbox
    if category is not None:
        doc["categories"][0]["name"] = category
    (root / "boxes.json").write_text(json.dumps(doc))
    return ["train-anc", root, "--out", c.tmp / "r", *TINY_MODEL, *TINY_TRAIN]


Case = tuple[str, Callable[[Ctx], list], tuple[str, ...]]


def _bad_box_file(c, source: str, content: str) -> list:
    """A YOLO or VOC XML folder whose W image img4 has a malformed box file."""
    root = write_box_folder(c.tmp / "bf", source)
    bad_box_file(root, source, content)
    return ["gen-logits", root, "--method", "box", "--out", c.tmp / "w.zarr", "--quiet"]


def _sam(c, checkpoint=None) -> list:
    more = [] if checkpoint is None else ["--sam-checkpoint", checkpoint]
    return ["gen-logits", c.data(), "--method", "sam", "--out", c.tmp / "s.zarr", "--num-full",
            "4", *more]  # fmt: skip


def _other_arch_weights(c) -> list:
    """resnet18 weights given to a resnet34 backbone: they would fill only part of it."""
    import torchvision

    torch.save(torchvision.models.resnet18(weights=None).state_dict(), c.tmp / "r18.pth")
    return c.anc("--backbone", "resnet34", "--pretrained", c.tmp / "r18.pth")


CASES: list[Case] = [
    # dataset layout and split lists
    (
        "dataset directory missing",
        lambda c: ["train-anc", c.tmp / "nope", "--out", c.tmp / "r", "--num-full", "4"],
        ("nope", "not found"),
    ),
    (
        "unknown layout",
        lambda c: (
            (c.tmp / "e").mkdir()
            or ["train-anc", c.tmp / "e", "--out", c.tmp / "r", "--num-full", "4"]
        ),
        ("unknown dataset layout",),
    ),
    ("split list missing", lambda c: c.anc("--split", "test"), ("test.txt", "no such split")),
    (
        "split list empty",
        lambda c: (c.data() / "train.txt").write_text("\n") and c.anc(),
        ("train.txt", "empty"),
    ),
    (
        "duplicate image ids",
        lambda c: (
            (c.data() / "train.txt").write_text(
                (c.data() / "train.txt").read_text() + c.first() + "\n"
            )
            and c.anc()
        ),
        ("train.txt", "duplicate image ids"),
    ),
    (
        "classes file empty",
        lambda c: (c.data() / "classes.txt").write_text("\n\n") and c.anc(),
        ("classes.txt", "no class names"),
    ),
    (
        "duplicate class names",
        lambda c: (
            (c.data() / "classes.txt").write_text("background\ndisc\ndisc\ntriangle\nring\n")
            and c.anc()
        ),
        ("classes.txt", "duplicate class name 'disc'"),
    ),
    # image files
    ("image missing", lambda c: _image(c).unlink() or c.anc(), ("image not found",)),
    (
        "image corrupt",
        lambda c: _write_garbage(_image(c)) or c.anc(),
        (".png", "not a readable image", "--skip-bad"),
    ),
    ("image truncated", lambda c: _truncate(_image(c)) or c.anc(), (".png", "truncated PNG")),
    (
        "weak image truncated (gen-logits)",
        lambda c: _truncate(c.data() / "train" / f"{c.weak_id()}.png") or c.gen(),
        ("truncated PNG",),
    ),
    # masks
    ("mask missing", lambda c: _mask(c).unlink() or c.anc(), ("annot", "file not found")),
    (
        "mask corrupt",
        lambda c: _write_garbage(_mask(c)) or c.anc(),
        ("annot", "not a readable image"),
    ),
    (
        "mask of another size",
        lambda c: write_label_png(_mask(c), np.zeros((10, 12), np.uint8)) or c.anc(),
        ("annot", "mask is 12x10 but its image is 32x32"),
    ),
    (
        "mask class id out of range",
        lambda c: write_label_png(_mask(c), np.full((32, 32), 9, np.uint8)) or c.anc(),
        ("annot", "class id 9 out of range"),
    ),
    (
        "mask with colour channels",
        lambda c: shutil.copy(_image(c), _mask(c)) and c.anc(),
        ("annot", "single-channel"),
    ),
    # the F / W split
    (
        "--num-full larger than the split",
        lambda c: c.anc("--num-full", "999"),
        ("--num-full 999", "12 images"),
    ),
    ("full list missing", lambda c: c.anc("--full-list", c.tmp / "f.txt"), ("f.txt", "not found")),
    (
        "full list with an unknown id",
        lambda c: (
            (c.tmp / "f.txt").write_text("nosuch\n") and c.anc("--full-list", c.tmp / "f.txt")
        ),
        ("f.txt", "not in split", "nosuch"),
    ),
    (
        "empty F",
        lambda c: (c.tmp / "f.txt").write_text("\n") and c.anc("--full-list", c.tmp / "f.txt"),
        ("empty F",),
    ),
    ("empty W", lambda c: c.primary("--num-full", "12"), ("W is empty",)),
    # box files (folder layout, COCO-style boxes.json)
    (
        "box outside the image",
        lambda c: _folder_with_box(c, [30, 30, 10, 10]),
        ("boxes.json", "img0", "outside the 32x32 image"),
    ),
    (
        "box with negative corner",
        lambda c: _folder_with_box(c, [-6, 2, 4, 4]),
        ("boxes.json", "outside"),
    ),
    (
        "box of negative size",
        lambda c: _folder_with_box(c, [4, 4, -2, 8]),
        ("boxes.json", "negative size"),
    ),
    (
        "box with NaN",
        lambda c: _folder_with_box(c, [4, float("nan"), 4, 8]),
        ("boxes.json", "not finite"),
    ),
    (
        "unknown class name in a box file",
        lambda c: _folder_with_box(c, category="zebra"),
        ("boxes.json", "unknown class name 'zebra'"),
    ),
    *[
        (
            f"YOLO label file: {what}",
            partial(_bad_box_file, source="yolo", content=content),
            ("labels/img4.txt", needle),
        )
        for what, (content, needle) in zip(
            (
                "wrong column count",
                "not numbers",
                "unknown class id",
                "box outside the image",
                "box of negative size",
            ),
            YOLO_BAD,
            strict=True,
        )
    ],
    *[
        (
            f"VOC XML box file: {what}",
            partial(_bad_box_file, source="voc_xml", content=content),
            ("annotations/img4.xml", needle),
        )
        for what, (content, needle) in zip(
            ("unknown class name", "corner not a number", "not well-formed XML"),
            XML_BAD,
            strict=True,
        )
    ],  # fmt: skip
    # logits stores
    (
        "store with another class order",
        lambda c: c.primary(
            "--logits",
            _store_attr(c, "class_names", ["disc", "background", "square", "triangle", "ring"]),
        ),
        ("classes",),
    ),
    (
        "store for another split",
        lambda c: c.primary("--num-full", "5"),
        ("not weak images of this split",),
    ),
    ("store for another dataset (image sizes)", _other_size, ("logits of", "are for a 32x32")),
    (
        "store with another stride (gen-logits resume)",
        lambda c: (
            shutil.copytree(c.pipeline["store"], c.tmp / "new.zarr") and c.gen("--stride", "2")
        ),
        ("new.zarr", "other stride"),
    ),
    ("half-written store", _half_written, ("w.zarr", "interrupted")),
    (
        "not a store",
        lambda c: c.primary("--logits", c.tmp / "none.zarr"),
        ("none.zarr", "no logits store"),
    ),
    ("foreign zarr at --out", _foreign_zarr, ("new.zarr", "not a boxseg logits store")),
    # checkpoints and training states
    (
        "checkpoint missing",
        lambda c: [
            "gen-logits",
            c.data(),
            "--model",
            c.tmp / "m.pt",
            "--out",
            c.tmp / "x.zarr",
            "--num-full",
            "4",
        ],
        ("m.pt", "checkpoint not found"),
    ),
    (
        "checkpoint unreadable",
        lambda c: (
            (c.tmp / "m.pt").write_bytes(b"junk") and ["eval", c.data(), "--model", c.tmp / "m.pt"]
        ),
        ("m.pt", "unreadable checkpoint"),
    ),
    ("checkpoint truncated", _truncated_checkpoint, ("half.pt", "unreadable checkpoint")),
    ("checkpoint of the wrong kind", _primary_model, ("model.pt", "primary model")),
    ("model for other classes", _other_classes_model, ("model.pt", "classes")),
    (
        "resume state of another run",
        lambda c: _resume_state(c, None),
        ("last.pt", "saved for a 6-step run"),
    ),
    (
        "resume state torn",
        lambda c: _resume_state(c, b"torn"),
        ("last.pt", "unreadable training state"),
    ),
    # where results go
    ("output directory not writable", _not_writable,
     ("a_file", "cannot create the output directory")),  # fmt: skip
    ("disk full", _disk_full, ("config.json", "No space left on device")),
    # option values
    ("negative learning rate", lambda c: c.anc("--lr", "-1"), ("--lr -1",)),
    ("NaN learning rate", lambda c: c.anc("--lr", "nan"), ("--lr nan",)),
    ("batch size 0", lambda c: c.anc("--batch-size", "0"), ("--batch-size 0",)),
    ("batch size 1", lambda c: c.anc("--batch-size", "1"), ("--batch-size 1", "batch norm")),
    ("crop too small", lambda c: c.anc("--crop", "8"), ("--crop 8",)),
    ("unknown backbone", lambda c: c.anc("--backbone", "vgg"), ("unknown backbone", "vgg")),
    (
        "pretrained weights of another architecture",
        _other_arch_weights,
        ("r18.pth", "tensors of a resnet34", "looks like a torchvision resnet18"),
    ),
    ("output stride 32", lambda c: c.anc("--output-stride", "32"), ("8 or 16",)),
    ("unknown optimizer", lambda c: c.anc("--optimizer", "lamb"), ("--optimizer lamb",)),
    ("unknown amp mode", lambda c: c.anc("--amp", "fp8"), ("--amp fp8",)),
    ("stride 0", lambda c: c.gen("--stride", "0"), ("--stride 0",)),
    ("unknown store dtype", lambda c: c.gen("--dtype", "int4"), ("--dtype int4",)),
    ("unknown gen-logits method", lambda c: c.gen("--method", "magic"), ("--method magic",)),
    (
        "--method sam without a checkpoint",
        lambda c: _sam(c),
        ("--method sam needs --sam-checkpoint PATH", "none is downloaded"),
    ),
    (
        "--method sam without the package",
        lambda c: c.monkeypatch.setitem(sys.modules, "segment_anything", None) or _sam(c),
        ("pip install 'boxseg[sam]'",),
    ),
    (
        "SAM checkpoint not a SAM file",
        lambda c: (c.tmp / "junk.pth").write_bytes(b"junk") and _sam(c, c.tmp / "junk.pth"),
        ("junk.pth", "not a SAM vit_b checkpoint"),
    ),
    (
        "box confidence out of range",
        lambda c: ["gen-logits", c.data(), "--method", "box", "--confidence", "1.5", "--out",
                   c.tmp / "new.zarr", "--num-full", "4"],
        ("--confidence 1.5",),
    ),
    (
        "alpha-end above alpha-start",
        lambda c: c.primary("--self-corr", "linear", "--alpha-start", "0.1", "--alpha-end", "0.5"),
        ("--alpha-end 0.5",),
    ),
    (
        "unknown self-correction",
        lambda c: c.primary("--self-corr", "cubic"),
        ("--self-corr cubic",),
    ),
    (
        "conv without an ancillary model",
        lambda c: c.primary("--self-corr", "conv"),
        ("needs --anc-model",),
    ),
    (
        "conv with an ancillary net trained on all of F",
        lambda c: c.primary("--self-corr", "conv", "--anc-model", c.pipeline["anc"]),
        ("trained on all of F", "--allow-full-anc"),
    ),
    (
        "eval given two sources",
        lambda c: ["eval", c.data(), "--model", c.pipeline["anc"], "--pred-dir", c.tmp],
        ("exactly one of",),
    ),
    ("NaN loss", lambda c: c.anc("--lr", "1e30"), ("loss became", "at step", "lower --lr")),
    (
        "unknown class weights",
        lambda c: c.anc("--class-weights", "inverse"),
        ("--class-weights inverse", "median-freq"),
    ),  # fmt: skip
    ("class weights file too short", _short_weights, ("w.txt", "give 5 weights")),
    ("negative box prior", lambda c: c.gen("--box-prior", "-1"), ("--box-prior -1",)),
    ("unknown box resize", lambda c: c.anc("--box-resize", "bilinear"), ("--box-resize bilinear",)),
]
# --- cases of issue 23: outputs, store integrity, boxes against images, text files, options ---


def _holding_notes(c: Ctx) -> Path:
    d = c.tmp / "notes"
    d.mkdir(exist_ok=True)
    (d / "todo.txt").write_text("mine")
    return d


def _existing_run(c: Ctx) -> list:
    from boxseg.outputs import output_dir

    run = output_dir(c.tmp / "r", "train-anc")
    (run / "model.pt").write_bytes(b"a finished run's model")
    return c.anc()


def _damaged_chunk(c: Ctx) -> list:
    chunk = c.store() / "logits" / "c.1.0.0.0"
    chunk.write_bytes(chunk.read_bytes()[:20])
    return ["eval", c.data(), "--split", "train", "--logits", c.store()]


def _damaged_flags(c: Ctx) -> list:
    (c.store() / "done" / "c.0").write_bytes(b"\x00\x01garbage")
    return ["eval", c.data(), "--split", "train", "--logits", c.store()]


def _store_of_other_files(c: Ctx) -> list:
    from boxseg.io import write_image

    shutil.copytree(c.pipeline["store"], c.tmp / "new.zarr")
    path = c.data() / "train" / f"{c.weak_id()}.png"
    write_image(path, np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    return c.gen()


def _folder_edit(c: Ctx, source: str, edit) -> list:
    """gen-logits (box-fill) on a folder dataset of `source` boxes after `edit(root)`."""
    if source == "coco":
        from tests.data.test_folder import write_folder

        root = write_folder(c.tmp / "f")
    else:
        names = "data.yaml" if source == "yaml" else "classes.txt"
        root = write_box_folder(c.tmp / "f", "yolo" if source == "yaml" else source, names=names)
    edit(root)
    return ["gen-logits", root, "--method", "box", "--out", c.tmp / "w.zarr", "--quiet"]


def _coco_edit(fn):
    import json

    def edit(root):
        doc = json.loads((root / "boxes.json").read_text())
        fn(doc)
        (root / "boxes.json").write_text(json.dumps(doc))

    return edit


def _yaml_names(text: str):
    def edit(root):
        (root / "data.yaml").write_text(f"path: .\nnames:\n{text}")

    return edit


def _mask_16bit(c: Ctx) -> list:
    import cv2

    mask = np.zeros((32, 32), np.uint16)
    mask[0, 0] = 300  # 300 % 256 = 44 would pass as a (wrong) class id if cast first
    cv2.imwrite(str(_mask(c)), mask)
    return c.anc()


NEW_CASES: list[Case] = [
    ("gen-logits --out: a directory of other files", lambda c: c.gen()[:5]
     + [_holding_notes(c)] + c.gen()[6:], ("notes", "not a boxseg logits store")),
    ("train-anc --out inside the dataset", lambda c: c.anc()[:3] + [c.data() / "runs"]
     + c.anc()[4:], ("inside the input directory",)),
    ("a run already in --out", _existing_run, ("a train-anc run is already here", "--resume",
                                                 "--overwrite")),
    ("--resume with --overwrite", lambda c: c.anc("--resume", "--overwrite"),
     ("--resume and --overwrite",)),
    ("eval --save-pred into the masks", lambda c: ["eval", c.data(), "--model",
     c.pipeline["anc"], "--save-pred", c.data() / "valannot"], ("inside the input directory",)),
    ("store chunk damaged", _damaged_chunk, ("logits of image", "--redo")),
    ("store done flags damaged", _damaged_flags, ("done flags are damaged", "--overwrite")),
    ("gen-logits resume into a store of other image files", _store_of_other_files,
     ("made from other image files",)),
    ("--redo of an id not in the store", lambda c: (shutil.copytree(c.pipeline["store"],
     c.tmp / "new.zarr") and c.gen("--redo", "nosuch")), ("--redo nosuch",)),
    ("VOC XML box beyond the image", lambda c: _folder_edit(c, "voc_xml", lambda r: (
     r / "annotations" / "img4.xml").write_text((r / "annotations" / "img4.xml").read_text()
     .replace("<xmax>20</xmax>", "<xmax>900</xmax>"))), ("img4.xml", "outside the 32x32 image")),
    ("COCO sizes of other images", lambda c: _folder_edit(c, "coco", _coco_edit(
     lambda d: d["images"][3].update(width=640, height=480))), ("image img3 is 640x480 there",)),
    ("YOLO labels named after no image", lambda c: _folder_edit(c, "yolo", lambda r: [
     p.rename(p.with_name("IMG_" + p.name)) for p in (r / "labels").iterdir()]),
     ("labels", "none of its 10 .txt files")),
    ("classes.txt not UTF-8", lambda c: _folder_edit(c, "coco", lambda r: (
     r / "classes.txt").write_bytes("background\ncat\nd\u00f6g\n".encode("latin-1"))),
     ("classes.txt", "not UTF-8")),
    ("data.yaml names with mixed keys", lambda c: _folder_edit(c, "yaml", _yaml_names(
     "  0: background\n  '1': cat\n  2: dog\n")), ("data.yaml", "integer ids")),
    ("data.yaml duplicate names", lambda c: _folder_edit(c, "yaml", _yaml_names(
     "  - background\n  - cat\n  - cat\n")), ("data.yaml", "duplicate class name 'cat'")),
    ("COCO category without id", lambda c: _folder_edit(c, "coco", _coco_edit(
     lambda d: d["categories"][0].pop("id"))), ("category 0 needs an 'id'",)),
    ("COCO image without file_name", lambda c: _folder_edit(c, "coco", _coco_edit(
     lambda d: d["images"][2].pop("file_name"))), ("image 2 needs", "file_name")),
    ("COCO annotations not a list", lambda c: _folder_edit(c, "coco", _coco_edit(
     lambda d: d.update(annotations={"a": 1}))), ("'annotations' must be a list",)),
    ("COCO image id used twice", lambda c: _folder_edit(c, "coco", _coco_edit(
     lambda d: d["images"][1].update(id=d["images"][0]["id"]))), ("image id 100 used twice",)),
    ("16-bit mask value beyond 255", _mask_16bit, ("uint16 mask with value 300",)),
    ("option the mode does not use", lambda c: ["eval", c.data(), "--logits", c.store(),
     "--split", "train", "--flip"], ("--flip", "not used with --logits")),
    ("unknown option", lambda c: c.anc("--iter", "3"), ("No such option: --iter",)),
    ("non-number in --config", lambda c: (c.tmp / "c.toml").write_text('seed = "one"\n')
     and c.anc("--config", c.tmp / "c.toml"), ("--seed",)),
    ("--workers -1", lambda c: c.anc("--workers", "-1"), ("--workers -1",)),
    ("--val-split typo", lambda c: c.anc("--val-split", "vall"), ("--val-split vall",
                                                                   "no such split")),
    ("export --out a directory", lambda c: ["export", c.pipeline["anc"], "--out", c.tmp,
     "--no-check"], ("is a directory",)),
    ("export --out under a file", lambda c: (c.tmp / "f").write_text("x") and ["export",
     c.pipeline["anc"], "--out", c.tmp / "f" / "m.onnx", "--no-check"], ("is a file",)),
    ("plot --out over someone's file", lambda c: (c.tmp / "p.png").write_bytes(b"mine") and [
     "plot", c.pipeline["anc"].parent, "--out", c.tmp / "p.png"], ("did not write",)),
    ("rank: store for another split", lambda c: ["rank", c.data(), "--logits", c.store(),
     "--num-full", "3", "--out", c.tmp / "r.csv"], ("w.zarr", "other split options")),
    ("rank: store for another dataset (image sizes)", lambda c: _other_size(c) and ["rank",
     c.data(), "--logits", c.store(), "--num-full", "4", "--out", c.tmp / "r.csv"],
     ("logits of", "are for a 32x32")),
    ("rank: --top without --list", lambda c: ["rank", c.data(), "--logits", c.store(),
     "--num-full", "4", "--out", c.tmp / "r.csv", "--top", "2"], ("--top and --list",)),
    ("rank: --list over an existing file", lambda c: (c.tmp / "f.txt").write_text("x") and [
     "rank", c.data(), "--logits", c.store(), "--num-full", "4", "--out", c.tmp / "r.csv",
     "--top", "2", "--list", c.tmp / "f.txt"], ("f.txt", "--overwrite")),
    ("viz --ranking not a ranking", lambda c: (c.tmp / "r.csv").write_text("a,b\n") and [
     "viz", c.data(), "--logits", c.store(), "--out", c.tmp / "v", "--ranking",
     c.tmp / "r.csv"], ("r.csv", "not a ranking written by boxseg rank")),
]  # fmt: skip
CASES += NEW_CASES


if not torch.cuda.is_available():
    CASES.append(("--device cuda without a GPU", lambda c: c.anc("--device", "cuda"),
                  ("--device cuda", "no CUDA device")))  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_malformed_input_gets_one_line(case: Case, pipeline, tmp_path, capsys, monkeypatch):
    name, build, needles = case
    argv = build(Ctx(tmp_path, pipeline, monkeypatch))
    capsys.readouterr()
    code, _, err = run_cli(argv, capsys)
    assert code == 2, f"{name}: exit {code}\n{err}"
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("boxseg: error: "), err
    for needle in needles:
        assert needle in lines[0], f"{name}: {needle!r} not in {lines[0]!r}"
    if os.environ.get("BOXSEG_CATALOGUE_OUT"):  # docs/reliability.md's table is made from this
        shown = re.sub(r"/\S*/pytest-\d+/", ".../", lines[0].replace(str(tmp_path), "..."))
        with open(os.environ["BOXSEG_CATALOGUE_OUT"], "a") as f:
            f.write(f"| {name} | `{shown}` |\n")


def test_catalogue_has_at_least_thirty_cases():
    assert len(CASES) >= 30
