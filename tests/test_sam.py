"""`gen-logits --method sam`: the plumbing, with a tiny SAM of random weights built from the
segment-anything package's own modules (no real weights can be downloaded here, so the
pseudo-labels' quality is not what these tests check)."""

import dataclasses
from functools import partial

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)

import boxseg.gen_logits as gl
from boxseg.data.boxes import BoxSpec
from boxseg.data.formats import load_weak, open_dataset
from boxseg.data.sample import VOID
from boxseg.data.split import SplitSpec
from boxseg.errors import BoxsegError
from boxseg.sam_labels import sam_fill, sam_masks
from boxseg.store import LogitsStore
from tests.conftest import run_cli

SPLIT = SplitSpec("train", 4, 0)


def tiny_sam(size: int = 64, dim: int = 32) -> SamPredictor:
    """SAM's architecture at toy scale: a 1-block ViT on 64-pixel inputs, random weights."""
    torch.manual_seed(0)
    encoder = ImageEncoderViT(img_size=size, patch_size=16, embed_dim=dim, depth=1, num_heads=2,
                              out_chans=dim, window_size=0)  # fmt: skip
    prompts = PromptEncoder(embed_dim=dim, image_embedding_size=(size // 16, size // 16),
                            input_image_size=(size, size), mask_in_chans=4)  # fmt: skip
    decoder = MaskDecoder(transformer_dim=dim, iou_head_hidden_dim=16,
                          transformer=TwoWayTransformer(depth=1, embedding_dim=dim, num_heads=2,
                                                        mlp_dim=32))  # fmt: skip
    return SamPredictor(Sam(encoder, prompts, decoder).eval())


def test_one_mask_per_box_and_smaller_boxes_on_top(tiny_data):
    ds = open_dataset(tiny_data)
    s = load_weak(ds, "train", ds.ids("train")[5], BoxSpec(4))
    predictor = tiny_sam()
    masks = sam_masks(predictor, s.image, s.boxes)
    assert masks.shape == (len(s.boxes), *s.image.shape[:2]) and masks.dtype == bool

    class Stub:  # SAM answering "the whole box" for every prompt, to check the painting
        def __getattr__(self, name):
            return getattr(predictor, name)

    boxes = np.array([[0, 0, 32, 32], [8, 8, 16, 16]], np.float32)  # big, then small inside
    labels = np.array([1, 3])
    whole = np.zeros((2, 32, 32), bool)
    whole[0], whole[1, 8:16, 8:16] = True, True
    import boxseg.sam_labels as sl

    real = sl.sam_masks
    sl.sam_masks = lambda p, image, b: whole
    try:
        out, empty = sam_fill(Stub(), s.image, boxes, labels, background=None)
    finally:
        sl.sam_masks = real
    assert (out[8:16, 8:16] == 3).all() and out[0, 0] == 1 and empty == 0
    out, empty = sam_fill(predictor, s.image, boxes[:0], labels[:0], background=None)
    assert (out == VOID).all() and empty == 0  # no boxes: nothing labelled


def test_sam_store_is_scored_trained_from_and_resumes(pipeline, tmp_path, monkeypatch, capsys):
    predictor = tiny_sam()
    out = tmp_path / "sam.zarr"
    real = LogitsStore.write_block
    calls = []

    def crash_on_second(self, start, logits, boxes=None):  # killed after the first block
        calls.append(start)
        if len(calls) == 2:
            raise RuntimeError("killed")
        real(self, start, logits, boxes)

    monkeypatch.setattr(gl, "WRITE_BLOCK", 3)
    monkeypatch.setattr(gl, "WRITER_DEPTH", 0)
    monkeypatch.setattr(LogitsStore, "write_block", crash_on_second)
    method = gl.BoxMethod("sam")
    sam = gl.GenLogitsOptions(pipeline["data"], str(out), SPLIT, box_method=method, stride=1)
    run = partial(gl.gen_logits, sam, quiet=True, sam_predictor=predictor)
    with pytest.raises(RuntimeError):
        run()
    monkeypatch.setattr(LogitsStore, "write_block", real)
    assert LogitsStore.open(out).done_mask().tolist()[:4] == [True] * 3 + [False]
    store = run()
    assert store.done_mask().all() and store.attrs["method"] == "sam"
    # stride 1: every stored pixel is a box-method soft label, log(0.9) where labelled
    x = store.read(0)
    labelled = ~torch.isnan(x[0])
    assert labelled.any()
    np.testing.assert_allclose(x.max(0).values[labelled].numpy(), np.log(0.9), atol=2e-3)
    whole = tmp_path / "sam_whole.zarr"
    sam_whole = dataclasses.replace(sam, out=str(whole))
    fresh = gl.gen_logits(sam_whole, quiet=True, sam_predictor=tiny_sam())
    np.testing.assert_array_equal(fresh.logits[:], store.logits[:])  # resumed == uninterrupted
    code, _, err = run_cli(["eval", pipeline["data"], "--split", "train", "--logits", out],
                           capsys)  # fmt: skip
    assert code == 0, err
    code, _, err = run_cli(["train-primary", pipeline["data"], "--out", tmp_path / "p",
                            "--num-full", "4", "--logits", out, "--iters", "2", "--batch-size",
                            "2", "--crop", "32", "--backbone", "resnet18", "--aspp-channels",
                            "16", "--decoder-channels", "16", "--device", "cpu", "--quiet"],
                           capsys)  # fmt: skip
    assert code == 0, err


def test_missing_checkpoint_and_missing_package_are_one_line(pipeline, tmp_path, capsys,
                                                             monkeypatch):  # fmt: skip
    argv = ["gen-logits", pipeline["data"], "--method", "sam", "--out", tmp_path / "s.zarr",
            "--num-full", "4"]  # fmt: skip
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and "--method sam needs --sam-checkpoint PATH" in err
    code, _, err = run_cli([*argv, "--sam-checkpoint", tmp_path / "nope.pth"], capsys)
    assert code == 2 and "nope.pth: SAM checkpoint not found" in err
    (tmp_path / "junk.pth").write_bytes(b"junk")
    code, _, err = run_cli([*argv, "--sam-checkpoint", tmp_path / "junk.pth"], capsys)
    assert code == 2 and "junk.pth: not a SAM vit_b checkpoint" in err
    assert len(err.strip().splitlines()) == 1
    monkeypatch.setitem(__import__("sys").modules, "segment_anything", None)  # not installed
    code, _, err = run_cli([*argv, "--sam-checkpoint", tmp_path / "junk.pth"], capsys)
    assert code == 2 and "pip install 'boxseg[sam]'" in err
    assert not (tmp_path / "s.zarr").exists()  # refused before any store was made
    with pytest.raises(BoxsegError, match="--sam-model vit_x"):
        from boxseg.sam_labels import load_sam

        monkeypatch.undo()
        load_sam(tmp_path / "junk.pth", "vit_x", torch.device("cpu"))


def test_sam_masks_are_clipped_to_their_box(monkeypatch):
    """A mask SAM spills outside its box is cut at the box (as GrabCut's are): the class never
    lands outside every box of it."""
    import boxseg.sam_labels as sl

    monkeypatch.setattr(sl, "sam_masks", lambda predictor, image, boxes: np.ones(
        (len(boxes), *image.shape[:2]), bool))  # fmt: skip
    image = np.zeros((20, 30, 3), np.uint8)
    boxes = np.array([[2, 3, 10, 12], [20, 1, 22.5, 19]], np.float32)
    out, empty = sl.sam_fill(None, image, boxes, np.array([1, 2]), 0)
    want = np.zeros((20, 30), np.uint8)
    want[3:12, 2:10] = 1
    want[1:19, 20:23] = 2
    assert empty == 0 and np.array_equal(out, want)


def test_sam_gets_only_boxes_covering_pixels_and_paints_in_box_fills_order(monkeypatch):
    """SAM goes through the one home of box geometry, as GrabCut does: a click box (no pixel)
    is never prompted, paints nothing and is no empty-mask fallback; boxes are painted in
    box-fill's order by the pixels they cover, not by their float size: box 2 (1.5 x 1.5)
    covers the same 2 x 2 pixels as box 3, so the later box 3 ends on top; box 4 reaches
    past the image (70 square units, 20 pixels in it), so it goes on top of box 5 (24)."""
    import boxseg.sam_labels as sl
    from boxseg.box_labels import box_fill

    prompted = []

    def whole_box(predictor, image, boxes):  # SAM answering "the whole image" per prompt
        prompted.append(np.asarray(boxes).tolist())
        return np.ones((len(boxes), *image.shape[:2]), bool)

    monkeypatch.setattr(sl, "sam_masks", whole_box)
    image = np.zeros((20, 30, 3), np.uint8)
    boxes = np.array(
        [[2, 3, 10, 12], [5, 5, 5, 9], [0, 0, 1.5, 1.5], [0, 0, 2, 2], [26, 0, 40, 5],
         [24, 0, 30, 4]], np.float32)  # fmt: skip
    labels = np.array([1, 2, 3, 1, 2, 3])
    out, empty = sl.sam_fill(None, image, boxes, labels, 0)
    assert len(prompted) == 1 and len(prompted[0]) == 5 and [5, 5, 5, 9] not in prompted[0]
    assert empty == 0
    np.testing.assert_array_equal(out, box_fill(20, 30, boxes, labels, 0))
    assert (out[:2, :2] == 1).all() and (out[:4, 26:30] == 2).all()
