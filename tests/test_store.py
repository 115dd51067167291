from pathlib import Path

import numpy as np
import pytest
import torch

from boxseg.cells import INT8_RANGE, decode_int8, encode_int8, pool_logits, upsample_logits
from boxseg.errors import BoxsegError
from boxseg.store import LogitsStore


def _store(tmp_path, sizes=((13, 18), (16, 16)), stride=4):
    return LogitsStore.create(
        tmp_path / "s.zarr",
        ["a", "b"],
        np.array(sizes),
        ["bg", "x", "y"],
        stride,
        {"checkpoint_sha256": "0" * 64},
    )


def test_pool_then_upsample_recovers_smooth_logits():
    yy, xx = torch.meshgrid(torch.arange(13.0), torch.arange(18.0), indexing="ij")
    logits = torch.stack([xx, yy, xx + yy])  # linear ramps
    back = upsample_logits(pool_logits(logits, 4), 4, 13, 18)
    assert back.shape == logits.shape
    # exact wherever bilinear interpolation has neighbours on both sides
    torch.testing.assert_close(back[:, 2:10, 2:14], logits[:, 2:10, 2:14], atol=1e-4, rtol=0)


def test_pooled_peak_stays_in_place():
    logits = torch.zeros(2, 32, 32)
    logits[0] = 5.0
    logits[1, 8:16, 20:28] = 10.0
    back = upsample_logits(pool_logits(logits, 4), 4, 32, 32)
    pred = back.argmax(0)
    inside = torch.zeros(32, 32, dtype=torch.bool)
    inside[8:16, 20:28] = True
    assert pred[9:15, 21:27].eq(1).all()  # the block, less its bilinear-rounded corners
    assert pred[~inside].eq(0).all()  # nothing leaks out of it: no shift


def test_write_read_roundtrip_and_done_flags(tmp_path):
    s = _store(tmp_path)
    assert not s.done_mask().any()
    logits = torch.randn(3, 13, 18)
    s.write(0, logits)
    again = LogitsStore.open(tmp_path / "s.zarr")
    assert again.done_mask().tolist() == [True, False]
    assert again.read(0).shape == (3, 4, 5)
    torch.testing.assert_close(again.read(0), pool_logits(logits, 4), atol=2e-2, rtol=1e-2)
    assert again.read_full(0).shape == (3, 13, 18)
    assert again.attrs["checkpoint_sha256"] == "0" * 64
    with pytest.raises(BoxsegError, match="no logits yet"):
        again.read(1)


def test_layout_one_chunk_per_image_float16(tmp_path):
    s = _store(tmp_path)
    assert s.logits.dtype == np.float16
    assert s.logits.shape == (2, 3, 4, 5) and s.logits.chunks == (1, 3, 4, 5)
    assert s.sizes.tolist() == [[13, 18], [16, 16]]


def test_check_matches_refuses_other_classes_and_ids(tmp_path):
    s = _store(tmp_path)
    s.write(0, torch.zeros(3, 13, 18))
    s.write(1, torch.zeros(3, 16, 16))
    s.check_matches(["bg", "x", "y"], ["a", "b"])
    with pytest.raises(BoxsegError, match="classes"):
        s.check_matches(["bg", "y", "x"], ["a", "b"])
    with pytest.raises(BoxsegError, match="not in the store"):
        s.check_matches(["bg", "x", "y"], ["a", "c"])


def test_unfinished_store_is_refused(tmp_path):
    s = _store(tmp_path)
    s.write(0, torch.zeros(3, 13, 18))
    with pytest.raises(BoxsegError, match="interrupted"):
        s.check_matches(["bg", "x", "y"], ["a", "b"])


def test_open_missing_store(tmp_path):
    with pytest.raises(BoxsegError, match="no logits store"):
        LogitsStore.open(tmp_path / "nothing.zarr")


def test_int8_codes_keep_the_softmax_close():
    logits = torch.randn(5, 40, 40) * 6
    decoded = decode_int8(encode_int8(logits))
    logp = torch.log_softmax(logits, 0)
    kept = logp > -INT8_RANGE  # below the range, classes are clamped (probability < 1.2e-7)
    err = (decoded - logp)[kept].abs().max().item()
    assert err <= INT8_RANGE / 254 / 2 + 1e-6  # half a code step
    p, q = torch.softmax(logits, 0), torch.softmax(decoded, 0)
    assert (p - q).abs().max() < 0.02
    assert (p.argmax(0) == q.argmax(0)).float().mean() > 0.99


def test_int8_store_roundtrip(tmp_path):
    s = LogitsStore.create(tmp_path / "q.zarr", ["a"], np.array([[13, 18]]), ["bg", "x", "y"],
                           4, {}, dtype="int8")  # fmt: skip
    assert s.logits.dtype == np.uint8 and s.dtype == "int8"
    logits = torch.randn(3, 13, 18) * 4
    s.write(0, logits)
    back = LogitsStore.open(tmp_path / "q.zarr").read(0)
    want = torch.log_softmax(pool_logits(logits, 4), 0)
    assert (back - want).abs().max() <= INT8_RANGE / 254 / 2 + 1e-5
    with pytest.raises(BoxsegError, match="--dtype int4"):
        LogitsStore.create(tmp_path / "r.zarr", ["a"], np.array([[4, 4]]), ["x"], 1, {}, "int4")


@pytest.mark.parametrize("scheme", ["file", "memory"])
def test_store_at_a_url(tmp_path, scheme):
    url = f"file://{tmp_path}/u.zarr" if scheme == "file" else f"memory://{tmp_path.name}/u.zarr"
    s = LogitsStore.create(url, ["a"], np.array([[8, 8]]), ["bg", "x"], 2, {})
    s.write(0, torch.ones(2, 8, 8))
    again = LogitsStore.open(url)
    assert again.done_mask().all() and again.read(0).shape == (2, 4, 4)
    if scheme == "file":
        assert (tmp_path / "u.zarr" / "zarr.json").is_file()


def test_void_pixels_neither_spread_nor_leak_into_pooled_logits():
    logits = torch.zeros(2, 16, 16)
    logits[1] = 3.0
    logits[:, :, :6] = torch.nan  # void: the left 6 columns
    pooled = pool_logits(logits, 4)
    assert torch.isnan(pooled[:, :, 0]).all() and not torch.isnan(pooled[:, :, 1:]).any()
    torch.testing.assert_close(pooled[:, :, 1], torch.tensor([[0.0] * 4, [3.0] * 4]))
    back = upsample_logits(pooled, 4, 16, 16)
    void = torch.isnan(back).any(0)
    assert void[:, :4].all() and not void[:, 6:].any()  # within a block of the true border
    assert not torch.isnan(back[:, :, 6:]).any() and (back[1, :, 6:] == 3.0).all()


def test_a_store_from_before_the_pixel_level_constraint_is_refused_in_one_line(
    tmp_path, capsys, tiny_data
):
    """boxseg-logits-v1 stores hold the constraint baked into pooled cells (box edges bent):
    reading one is refused with a line saying how to rewrite it."""
    from tests.conftest import run_cli

    loc = tmp_path / "old.zarr"
    LogitsStore.create(str(loc), ["a"], np.array([[8, 8]], np.int32), ["x", "y"], 4, {})
    group = LogitsStore.open(loc, mode="r+").group
    group.attrs["format"] = "boxseg-logits-v1"
    with pytest.raises(BoxsegError, match="--overwrite"):
        LogitsStore.open(loc)
    code, _, err = run_cli(["eval", tiny_data, "--logits", loc], capsys)
    assert code == 2 and "rewrite it" in err and len(err.strip().splitlines()) == 1


def test_boxes_are_stored_beside_the_logits(tmp_path):
    s = LogitsStore.create(str(tmp_path / "b.zarr"), ["a", "b"], np.array([[8, 8], [8, 8]]),
                           ["x", "y"], 4, {})  # fmt: skip
    boxes = np.array([[0.5, 1, 3, 4.25], [2, 2, 8, 8]], np.float32)
    s.write_block(0, [torch.zeros(2, 8, 8), torch.zeros(2, 8, 8)],
                  [(boxes, np.array([1, 0])), None])  # fmt: skip
    s = LogitsStore.open(s.location)
    got, labels = s.read_boxes(0)
    assert np.array_equal(got, boxes) and labels.tolist() == [1, 0]
    assert s.read_boxes(1)[0].shape == (0, 4) and s.rule is None


# --- integrity: a done flag means the chunk is there and decodes -----------------------------


def _damage(store_dir: Path, index: int, how: str) -> None:
    chunk = store_dir / "logits" / f"c.{index}.0.0.0"
    data = chunk.read_bytes()
    if how == "truncated":
        chunk.write_bytes(data[: len(data) // 2])
    elif how == "random bytes":
        chunk.write_bytes(np.random.default_rng(0).bytes(len(data)))
    else:
        chunk.unlink()


@pytest.mark.parametrize("how", ["truncated", "random bytes", "deleted"])
def test_damaged_chunk_is_one_line_naming_the_image(how, pipeline, tmp_path, capsys):
    import shutil

    from tests.conftest import TINY_MODEL, TINY_TRAIN, run_cli

    store_dir = tmp_path / "w.zarr"
    shutil.copytree(pipeline["store"], store_dir)
    victim = LogitsStore.open(store_dir).image_ids[2]
    _damage(store_dir, 2, how)
    for argv in (["eval", pipeline["data"], "--split", "train", "--logits", store_dir],
                 ["train-primary", pipeline["data"], "--out", tmp_path / "p", "--num-full", "4",
                  "--logits", store_dir, "--iters", "40", *TINY_MODEL, *TINY_TRAIN[2:]]):
        code, _, err = run_cli(argv, capsys)
        assert code == 2, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("boxseg: error: "), err
        assert victim in lines[0] and f"--redo {victim}" in lines[0], lines[0]


def test_redo_rewrites_a_damaged_chunk(pipeline, tmp_path, capsys):
    import shutil

    from tests.conftest import run_cli

    store_dir = tmp_path / "w.zarr"
    shutil.copytree(pipeline["store"], store_dir)
    want = LogitsStore.open(store_dir).read(1).clone()
    victim = LogitsStore.open(store_dir).image_ids[1]
    _damage(store_dir, 1, "deleted")
    code, _, err = run_cli(["gen-logits", pipeline["data"], "--model", pipeline["anc"], "--out",
                            store_dir, "--num-full", "4", "--device", "cpu", "--quiet",
                            "--redo", victim], capsys)  # fmt: skip
    assert code == 0, err
    assert torch.equal(LogitsStore.open(store_dir).read(1), want)


def test_resume_into_a_store_of_another_dataset_is_refused(pipeline, tmp_path, capsys):
    import shutil

    from boxseg.io import read_image, read_label_png, write_image, write_label_png
    from tests.conftest import run_cli

    store_dir = tmp_path / "w.zarr"
    shutil.copytree(pipeline["store"], store_dir)
    before = {p.name: p.read_bytes() for p in (store_dir / "logits").iterdir()}
    wid = LogitsStore.open(store_dir).image_ids[0]
    argv = ["gen-logits", tmp_path / "d", "--model", pipeline["anc"], "--out", store_dir,
            "--num-full", "4", "--device", "cpu", "--quiet"]  # fmt: skip
    for change in ("size", "content"):
        shutil.rmtree(tmp_path / "d", ignore_errors=True)
        shutil.copytree(pipeline["data"], tmp_path / "d")
        path = tmp_path / "d" / "train" / f"{wid}.png"
        img = read_image(path)
        if change == "size":  # another copy of the dataset, resized
            img = np.pad(img, ((0, 8), (0, 8), (0, 0)))
            mask_path = tmp_path / "d" / "trainannot" / f"{wid}.png"
            write_label_png(mask_path, np.pad(read_label_png(mask_path), ((0, 8), (0, 8))))
        else:  # same size, other pixels (another dataset under the same names)
            img = np.random.default_rng(1).integers(0, 255, img.shape, dtype=np.uint8)
        write_image(path, img)
        code, _, err = run_cli(argv, capsys)
        assert code == 2 and "other image" in err and wid in err, err
    assert {p.name: p.read_bytes() for p in (store_dir / "logits").iterdir()} == before


def test_logits_in_memory_read_and_check_as_a_store_does(tmp_path):
    """Both holders of logits are `LogitsSource`s. InMemoryLogits' decoded reads follow its
    box rule (class 2 has no box: pushed down everywhere), and it refuses another dataset's W
    as a store does, naming itself."""
    from boxseg.box_constraint import BoxEvidence, ConstraintRule
    from boxseg.store import InMemoryLogits, LogitsSource

    assert isinstance(_store(tmp_path), LogitsSource)
    logits = torch.randn(3, 6, 8, generator=torch.Generator().manual_seed(0))
    boxes = (np.array([[0, 0, 4, 4]], np.float32), np.array([1]))
    rule = ConstraintRule.of(3, 0, None)
    source = InMemoryLogits({"a": logits}, ["bg", "x", "y"], {"a": boxes}, rule)
    assert isinstance(source, LogitsSource)
    torch.testing.assert_close(source.read_full(0, constrained=False), logits)
    want = rule.apply(logits[None], BoxEvidence.whole([boxes[0]], [boxes[1]], 6, 8))[0]
    torch.testing.assert_close(source.read_full(0), want)
    assert (source.read_full(0)[2] < logits[2] - 100).all()
    source.check_matches(["bg", "x", "y"], ["a"])
    with pytest.raises(BoxsegError, match="<logits in memory>: 1 weak images of this split"):
        source.check_matches(["bg", "x", "y"], ["a", "b"])
    with pytest.raises(BoxsegError, match="<logits in memory>: the store's classes"):
        source.check_matches(["bg", "y", "x"], ["a"])
