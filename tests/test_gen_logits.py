"""gen-logits' batching: several images per forward pass, the same values as one at a time
(to float16 precision), batches that do not depend on ranks or interruptions."""

import dataclasses
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import boxseg.gen_logits as gl
from boxseg import distributed
from boxseg.box_constraint import BoxConstraint
from boxseg.checkpoint import load_model
from boxseg.data.boxes import BoxSpec
from boxseg.data.formats import load_weak, open_dataset
from boxseg.data.split import SplitSpec, split_dataset
from boxseg.errors import BoxsegError
from boxseg.inference import predict_batch, predict_logits
from boxseg.store import LogitsStore
from tests.conftest import run_cli

SPLIT = SplitSpec("train", 4, 0)


def anc_store(data, anc_model, out: str, **options) -> gl.GenLogitsOptions:
    """gen-logits' options for the store of SPLIT's W from the ancillary net, on the CPU."""
    return gl.GenLogitsOptions(data, out, SPLIT, anc_model, device="cpu", **options)


def test_a_batch_gives_each_image_its_own_logits(pipeline):
    model, meta = load_model(pipeline["anc"], kind="ancillary", device=torch.device("cpu"))
    ds = open_dataset(pipeline["data"])
    _, weak = split_dataset(ds, SPLIT)
    samples = [load_weak(ds, "train", i, BoxSpec.from_dict(meta["boxes"])) for i in weak[:3]]
    batch = predict_batch(model, meta, [s.image for s in samples], torch.device("cpu"),
                          [s.boxes for s in samples], [s.labels for s in samples])  # fmt: skip
    assert batch.shape[0] == 3
    for k, s in enumerate(samples):
        alone = predict_logits(model, meta, s.image, torch.device("cpu"), s.boxes, s.labels)
        torch.testing.assert_close(batch[k], alone, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="one size"):
        predict_batch(model, meta, [samples[0].image, samples[0].image[:16]], torch.device("cpu"),
                      [s.boxes for s in samples[:2]], [s.labels for s in samples[:2]])  # fmt: skip


def test_batch_size_changes_values_only_below_float16_precision(pipeline, tmp_path):
    stores = {}
    for bs in (1, 3, 8):
        out = str(tmp_path / f"b{bs}.zarr")
        gl.gen_logits(anc_store(pipeline["data"], pipeline["anc"], out, batch_size=bs), quiet=True)
        stores[bs] = LogitsStore.open(out).logits[:].astype(np.float32)
    np.testing.assert_allclose(stores[1], stores[8], atol=2e-2)
    np.testing.assert_allclose(stores[3], stores[8], atol=2e-2)
    # the session's store was made with the default batch size (8): the same bits
    np.testing.assert_array_equal(stores[8], LogitsStore.open(pipeline["store"]).logits[:])


@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_ranks_share_whole_groups(monkeypatch, world):
    todo = [0, 1, 2, 5, 6, 7, 8, 9, 12, 13]
    shares = []
    for rank in range(world):
        monkeypatch.setattr(distributed, "world", lambda w=world: w)
        monkeypatch.setattr(distributed, "rank", lambda r=rank: r)
        shares.append(gl.rank_share(todo, 4))
    assert sorted(i for s in shares for i in s) == todo  # every image once
    for s in shares:  # a group (i // 4) is never split between ranks
        for t in shares:
            if s is not t:
                assert not {i // 4 for i in s} & {i // 4 for i in t}
    assert [i for s in shares for i in s] == todo  # contiguous runs, in order of the ranks


@pytest.mark.parametrize("workers", [0, 2])
def test_an_image_changed_since_the_store_was_made_is_a_clear_error(
    pipeline, tmp_path, monkeypatch, workers
):
    """Also when the image is read in a reader process: the BoxsegError itself comes back."""
    data = tmp_path / "data"
    shutil.copytree(pipeline["data"], data)
    out = str(tmp_path / "w.zarr")
    real = LogitsStore.write_block

    def stop(self, start, logits, boxes=None):
        raise RuntimeError("killed")

    monkeypatch.setattr(LogitsStore, "write_block", stop)
    with pytest.raises(RuntimeError):
        gl.gen_logits(anc_store(data, pipeline["anc"], out), quiet=True)
    monkeypatch.setattr(LogitsStore, "write_block", real)
    store, ds = LogitsStore.open(out), open_dataset(data)
    victim = store.image_ids[2]  # image and mask replaced by a larger pair
    image = cv2.imread(str(ds.image_path("train", victim)))
    cv2.imwrite(str(ds.image_path("train", victim)), cv2.resize(image, (48, 40)))
    mask = cv2.imread(str(ds.mask_path("train", victim)), cv2.IMREAD_UNCHANGED)
    mask = cv2.resize(mask, (48, 40), interpolation=cv2.INTER_NEAREST)
    cv2.imwrite(str(ds.mask_path("train", victim)), mask)
    with pytest.raises(BoxsegError, match=f"made from other images: {victim} is 48x40 here, "
                       "32x32 in the store"):  # (the resume check, before any image is read)
        gl.gen_logits(anc_store(data, pipeline["anc"], out, workers=workers), quiet=True)
    import boxseg.store  # an image changed after that check: the reader says so

    monkeypatch.setattr(boxseg.store, "_mismatch", lambda *a: None)
    changed = r"^\S+: its pixels are 48x40 but its header said 32x32"
    with pytest.raises(BoxsegError, match=changed) as e:
        gl.gen_logits(anc_store(data, pipeline["anc"], out, workers=workers), quiet=True)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_reader_workers_and_the_writer_thread_write_the_same_store(pipeline, tmp_path,
                                                                   batch_size):  # fmt: skip
    """gen-logits as a pipeline (2 reader processes ahead of the net, chunks written by a
    background thread) writes the store element for element as reading in-process does."""
    stores = []
    for workers in (0, 2):
        out = str(tmp_path / f"w{workers}.zarr")
        opts = anc_store(pipeline["data"], pipeline["anc"], out, workers=workers)
        gl.gen_logits(dataclasses.replace(opts, batch_size=batch_size), quiet=True)
        s = LogitsStore.open(out)
        assert s.done_mask().all()
        stores.append(s.logits[:])
    np.testing.assert_array_equal(stores[0], stores[1])
    assert np.abs(stores[0]).max() > 0  # real logits, not the fill value


def test_thread_count_changes_at_most_the_last_float16_bit(pipeline, tmp_path):
    """The guarantee docs/store.md states: stores made with the same number of threads per
    process are equal element for element (test_distributed.py); with another thread count the
    CPU kernels sum in another order, so a value may differ by one float16 step, never more,
    and the argmax does not move."""
    import os
    import subprocess
    import sys

    stores = {}
    for threads in ("1", "2"):
        out = tmp_path / f"t{threads}.zarr"
        subprocess.run([sys.executable, "-m", "boxseg", "gen-logits", str(pipeline["data"]),
                        "--model", str(pipeline["anc"]), "--out", str(out), "--num-full", "4",
                        "--device", "cpu", "--quiet"],
                       env=os.environ | {"OMP_NUM_THREADS": threads}, check=True,
                       timeout=120)  # fmt: skip
        stores[threads] = LogitsStore.open(out).logits[:].astype(np.float32)
    a, b = stores["1"], stores["2"]
    ulp = np.spacing(np.abs(a).astype(np.float16)).astype(np.float32)
    assert (np.abs(a - b) <= ulp + 1e-12).all()
    np.testing.assert_array_equal(a.argmax(1), b.argmax(1))


@pytest.mark.parametrize(
    "flags, source",
    [
        (
            "--model m.pt --stride 2 --dtype int8 --batch-size 3 --workers 0 --box-prior 1 "
            "--box-penalty 5 --box-uncovered void",
            {
                "model_path": Path("m.pt"),
                "stride": 2,
                "dtype": "int8",
                "batch_size": 3,
                "workers": 0,
                "constraint": BoxConstraint(True, 1.0, 5.0, True),
            },
        ),
        (
            "--method grabcut --confidence 0.8 --grabcut-iters 2 --grabcut-margin 3 "
            "--box-min-area 8 --workers 2",
            {"box_method": gl.BoxMethod("grabcut", 0.8, 2, 3, 8), "workers": 2},
        ),
    ],
)
def test_the_cli_passes_one_options_value(tiny_data, tmp_path, capsys, monkeypatch, flags, source):
    """Every gen-logits flag lands in its field of GenLogitsOptions."""
    seen = []
    monkeypatch.setattr(gl, "gen_logits", lambda opts, quiet: seen.append((opts, quiet)))
    monkeypatch.chdir(tmp_path)
    common = "--num-full 4 --seed-split 1 --device cpu --overwrite --skip-bad --quiet".split()
    args = ["gen-logits", tiny_data, "--out", "w.zarr", *flags.split(), *common]
    code, _, err = run_cli([*args, "--redo", "a, b"], capsys)
    assert code == 0, err
    split = SplitSpec("train", 4, 1)
    options = {"device": "cpu", "overwrite": True, "skip_bad": True, "redo": ("a", "b")}
    assert seen == [(gl.GenLogitsOptions(tiny_data, "w.zarr", split, **source, **options), True)]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"stride": 0}, "--stride 0: must be a positive integer"),
        ({"batch_size": 0}, "--batch-size 0: must be at least 1"),
        ({"workers": -1}, "--workers -1: must be 0"),
        ({"dtype": "int4"}, "--dtype int4: choose float16 or int8"),
        ({"model_path": None}, "--method anc needs --model"),
        ({"box_method": gl.BoxMethod("box", confidence=1.5)}, "--confidence 1.5: must be in"),
        ({"constraint": BoxConstraint(prior=-1.0)}, "--box-prior -1.0: must be in [0, 100]"),
    ],
)
def test_options_that_cannot_work_are_refused_before_anything_is_read(tmp_path, change, message):
    """validate() runs first: the option is named, not the missing dataset or model, and no
    store is made."""
    out = str(tmp_path / "w.zarr")
    opts = gl.GenLogitsOptions(tmp_path / "no-data", out, SPLIT, tmp_path / "m.pt", device="cpu")
    with pytest.raises(BoxsegError, match=re.escape(message)):
        gl.gen_logits(dataclasses.replace(opts, **change), quiet=True)
    assert not Path(out).exists()
