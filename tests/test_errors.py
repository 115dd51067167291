"""User mistakes: one line on stderr naming the file and the problem, exit code 2."""

import shutil

import numpy as np
import pytest

from boxseg.store import LogitsStore
from tests.conftest import TINY_MODEL, TINY_TRAIN, run_cli

SPLIT = ["--num-full", "4"]


def _primary(pipeline, tmp_path, *flags):
    """A tiny train-primary command line on the session's pipeline data."""
    return ["train-primary", pipeline["data"], "--out", tmp_path / "p", *TINY_MODEL, *TINY_TRAIN,
            *flags]  # fmt: skip


def _assert_user_error(code, err, *needles):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("boxseg: error:"), err
    assert "Traceback" not in err
    for n in needles:
        assert str(n) in lines[0]


def test_missing_dataset_directory(tmp_path, capsys):
    code, _, err = run_cli(
        ["train-anc", tmp_path / "nope", "--out", tmp_path / "r", *SPLIT], capsys
    )
    _assert_user_error(code, err, tmp_path / "nope", "not found")


def test_unknown_layout(tmp_path, capsys):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "readme.md").write_text("hi")
    code, _, err = run_cli(["train-anc", tmp_path / "d", "--out", tmp_path / "r", *SPLIT], capsys)
    _assert_user_error(code, err, "unknown dataset layout", "segnet")


def test_missing_checkpoint(tiny_data, tmp_path, capsys):
    code, _, err = run_cli(
        [
            "gen-logits",
            tiny_data,
            "--model",
            tmp_path / "m.pt",
            "--out",
            tmp_path / "w.zarr",
            *SPLIT,
        ],
        capsys,
    )
    _assert_user_error(code, err, "m.pt", "checkpoint not found")


def test_garbage_checkpoint(tiny_data, tmp_path, capsys):
    (tmp_path / "m.pt").write_bytes(b"not a checkpoint")
    code, _, err = run_cli(["eval", tiny_data, "--model", tmp_path / "m.pt"], capsys)
    _assert_user_error(code, err, "m.pt", "unreadable checkpoint")


def test_primary_model_given_as_the_ancillary_net(pipeline, tmp_path, capsys):
    """gen-logits takes a primary model (self-training targets); train-primary's --anc-model
    must be an ancillary one (it needs the box path)."""
    code, _, err = run_cli(_primary(pipeline, tmp_path, *SPLIT), capsys)
    assert code == 0, err
    args = ["train-primary", pipeline["data"], "--out", tmp_path / "q", "--anc-model",
            tmp_path / "p" / "model.pt", *SPLIT, *TINY_MODEL, *TINY_TRAIN]  # fmt: skip
    code, _, err = run_cli(args, capsys)
    _assert_user_error(code, err, "model.pt", "primary model", "ancillary model is needed")


def test_store_with_other_classes_is_refused(pipeline, tmp_path, capsys):
    store = tmp_path / "w.zarr"
    shutil.copytree(pipeline["store"], store)
    s = LogitsStore.open(store, mode="r+")
    s.group.attrs["class_names"] = list(reversed(s.class_names))
    code, _, err = run_cli(_primary(pipeline, tmp_path, "--logits", store, *SPLIT), capsys)
    _assert_user_error(code, err, "w.zarr", "classes")


def test_store_for_another_split_is_refused(pipeline, tmp_path, capsys):
    code, _, err = run_cli(
        _primary(pipeline, tmp_path, "--logits", pipeline["store"], "--num-full", "5"), capsys
    )
    _assert_user_error(code, err, "weak.zarr", "not weak images of this split")


def test_not_a_store(pipeline, tmp_path, capsys):
    code, _, err = run_cli(
        _primary(pipeline, tmp_path, "--logits", tmp_path / "none.zarr", *SPLIT), capsys
    )
    _assert_user_error(code, err, "none.zarr", "no logits store")


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--lr", "-1"], "--lr -1"),
        (["--backbone", "vgg"], "unknown backbone"),
        (["--self-corr", "cubic"], "--self-corr cubic"),
        (["--alpha-start", "0.1", "--alpha-end", "0.5", "--self-corr", "linear"], "alpha-end"),
        (["--output-stride", "32"], "8 or 16"),
        (["--num-full", "999"], "--num-full 999"),
    ],
)
def test_bad_options(pipeline, tmp_path, capsys, flags, needle):
    args = _primary(pipeline, tmp_path, "--logits", pipeline["store"], *SPLIT, *flags)
    code, _, err = run_cli(args, capsys)
    _assert_user_error(code, err, needle)


def test_debug_shows_traceback(tmp_path):
    """Without --debug a user mistake is one line; with it, the whole traceback."""
    import subprocess
    import sys

    args = ["train-anc", str(tmp_path / "nope"), "--out", str(tmp_path / "r"), *SPLIT]
    run = [sys.executable, "-m", "boxseg"]
    plain = subprocess.run([*run, *args], capture_output=True, text=True, timeout=120)
    debug = subprocess.run([*run, "--debug", *args], capture_output=True, text=True, timeout=120)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    assert "Traceback (most recent call last)" in debug.stderr
    assert "BoxsegError" in debug.stderr and debug.returncode != 0


@pytest.mark.parametrize("workers", ["0", "1"])
def test_mask_image_size_mismatch(tiny_data, tmp_path, capsys, workers):
    from boxseg.io import write_label_png

    data = tmp_path / "d"
    shutil.copytree(tiny_data, data)
    first = (data / "train.txt").read_text().split()[0]
    write_label_png(data / "trainannot" / f"{first}.png", np.zeros((10, 12), np.uint8))
    code, _, err = run_cli(
        [
            "train-anc",
            data,
            "--out",
            tmp_path / "r",
            "--num-full",
            "12",
            "--workers",
            workers,
            *TINY_MODEL,
            *TINY_TRAIN,
            "--iters",
            "6",  # one epoch: every image is read
        ],
        capsys,
    )
    _assert_user_error(code, err, f"{first}.png", "12x10")


def test_no_split_names_the_real_option(tiny_data, tmp_path, capsys):
    code, _, err = run_cli(["train-anc", tiny_data, "--out", tmp_path / "a", *TINY_MODEL,
                            *TINY_TRAIN], capsys)  # fmt: skip
    _assert_user_error(code, err, "--num-full N (with --seed-split)", "--full-list")


def test_opencv_prints_nothing_before_the_one_line_error(tiny_data, tmp_path):
    """A PNG with an oversized chunk makes OpenCV log a WARN line of its own when it decodes
    it; boxseg silences OpenCV's logging, so stderr (read at the file-descriptor level, in a
    fresh process) holds boxseg's line alone."""
    import struct
    import subprocess
    import sys

    png = sorted((tiny_data / "train").glob("*.png"))[0]
    raw = png.read_bytes()
    i = raw.index(b"IDAT") - 4
    bad = tmp_path / "bad.png"
    bad.write_bytes(raw[:i] + struct.pack(">I", 0x7FFFFFF0) + b"zzZz" + bytes(16) + raw[i:])
    code = ("from boxseg.io import read_image\nfrom boxseg.errors import BoxsegError\n"
            f"try:\n    read_image({str(bad)!r})\nexcept BoxsegError as e:\n"
            "    import sys\n    print(f'boxseg: error: {e}', file=sys.stderr)\n"
            "    sys.exit(2)\n")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    _assert_user_error(done.returncode, done.stderr, "bad.png", "not a readable image")
