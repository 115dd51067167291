"""Nothing lost: every command that writes refuses, in one line and exit 2, an output it did not
make (a directory holding someone's file, an input directory) and leaves it byte-identical;
runs need --resume or --overwrite; URL stores resume like local ones."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from boxseg.data.split import SplitSpec
from boxseg.engine import TrainConfig
from boxseg.models import ModelSpec
from boxseg.outputs import MARKER, output_dir
from boxseg.primary_options import PrimaryOptions
from boxseg.store import LogitsStore
from boxseg.train_primary import train_primary
from tests.conftest import TINY_MODEL, TINY_TRAIN, run_cli


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under `root` with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}  # fmt: skip


@pytest.fixture(scope="module")
def primary_model(pipeline, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("primary") / "run"
    cfg = TrainConfig(iters=1, batch_size=2, crop=32, device="cpu")
    split, spec = SplitSpec("train", 4, 0), ModelSpec("resnet18", 16, 16, 16, 8)
    train_primary(PrimaryOptions(pipeline["data"], run, split, spec, cfg, val_split=None), True)
    return run / "model.pt"


def _commands(pipeline: dict, model: Path, data: Path, out: Path) -> dict[str, list]:
    """Each writing command with its output at `out`."""
    return {
        "gen-logits": ["gen-logits", data, "--model", pipeline["anc"], "--out", out,
                       "--num-full", "4", "--device", "cpu", "--quiet"],
        "predict": ["predict", model, data / "val", "--out", out, "--device", "cpu", "--quiet"],
        "eval --save-pred": ["eval", data, "--model", model, "--save-pred", out, "--device",
                             "cpu", "--quiet"],
        "train-anc": ["train-anc", data, "--out", out, "--num-full", "4", *TINY_MODEL,
                      *TINY_TRAIN],
        "train-primary": ["train-primary", data, "--out", out, "--num-full", "4", *TINY_MODEL,
                          *TINY_TRAIN],
        "viz": ["viz", data, "--logits", pipeline["store"], "--out", out, "--num", "1",
                "--device", "cpu"],
        "split": ["split", data, "--out", out, "--num-full", "4"],
        "export": ["export", model, "--out", out, "--no-check"],
        "demo": ["demo", "--out", out, "--data-only", "--quiet"],
    }  # fmt: skip


COMMANDS = ["gen-logits", "predict", "eval --save-pred", "train-anc", "train-primary", "viz",
            "split", "export", "demo"]  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS)
def test_directory_with_a_sentinel_is_left_alone(command, pipeline, primary_model, tmp_path,
                                                 capsys):  # fmt: skip
    data = tmp_path / "data"
    shutil.copytree(pipeline["data"], data)
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "sentinel.txt").write_text("my notes, not boxseg's\n")
    before, data_before = snapshot(notes), snapshot(data)
    code, _, err = run_cli(_commands(pipeline, primary_model, data, notes)[command], capsys)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("boxseg: error: "), err
    assert snapshot(notes) == before and snapshot(data) == data_before


@pytest.mark.parametrize("command", [c for c in COMMANDS if c not in ("export", "demo")])
def test_output_inside_an_input_directory_is_refused(command, pipeline, primary_model, tmp_path,
                                                     capsys):  # fmt: skip
    data = tmp_path / "data"
    shutil.copytree(pipeline["data"], data)
    before = snapshot(data)
    out = data / "val" if command == "predict" else data / "out"
    code, _, err = run_cli(_commands(pipeline, primary_model, data, out)[command], capsys)
    assert code == 2, err
    assert "input directory" in err and len(err.strip().splitlines()) == 1, err
    assert snapshot(data) == before


def test_eval_save_pred_into_the_masks_is_refused(pipeline, primary_model, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(pipeline["data"], data)
    before = snapshot(data)
    code, _, err = run_cli(["eval", data, "--model", primary_model, "--save-pred",
                            data / "valannot", "--device", "cpu", "--quiet"], capsys)  # fmt: skip
    assert code == 2 and "input directory" in err
    assert snapshot(data) == before


def test_a_run_is_not_started_over_without_resume_or_overwrite(pipeline, tmp_path, capsys):
    argv = ["train-anc", pipeline["data"], "--out", tmp_path / "r", "--num-full", "4",
            "--val-split", "", *TINY_MODEL, *TINY_TRAIN]  # fmt: skip
    assert run_cli(argv, capsys)[0] == 0
    (tmp_path / "r" / "my_notes.txt").write_text("keep me")
    before = snapshot(tmp_path / "r")
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and "--resume" in err and "--overwrite" in err, err
    assert snapshot(tmp_path / "r") == before
    code, _, err = run_cli([*argv, "--overwrite"], capsys)
    assert code == 0, err
    after = snapshot(tmp_path / "r")
    assert after["my_notes.txt"] == b"keep me"  # --overwrite removes only a run's own files
    assert after["model.pt"] != before["model.pt"] or after["config.json"] != before["config.json"]
    assert run_cli([*argv, "--resume"], capsys)[0] == 0


def test_commands_rewrite_their_own_outputs(pipeline, primary_model, tmp_path, capsys):
    """predict, split and viz run again into the directory they made: allowed (their files)."""
    cmds = _commands(pipeline, primary_model, pipeline["data"], tmp_path / "o")
    for name in ("predict", "split", "viz"):
        out = tmp_path / name
        argv = [out if a == tmp_path / "o" else a for a in cmds[name]]
        for _ in range(2):
            code, _, err = run_cli(argv, capsys)
            assert code == 0, f"{name}: {err}"
        assert (out / MARKER).is_file()
    # but a directory made by another command is not theirs
    code, _, err = run_cli([tmp_path / "split" if a == tmp_path / "o" else a
                            for a in cmds["predict"]], capsys)  # fmt: skip
    assert code == 2 and "boxseg split" in err


def test_export_replaces_only_its_own_file(primary_model, tmp_path, capsys):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from boxseg.export import is_boxseg_onnx

    out = tmp_path / "m.onnx"  # an earlier export: a (tiny) ONNX file with boxseg's metadata
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    proto = helper.make_model(graph)
    helper.set_model_props(proto, {"boxseg": "{}"})
    onnx.save(proto, out)
    assert is_boxseg_onnx(out)
    argv = ["export", primary_model, "--out", out, "--no-check"]
    assert run_cli(argv, capsys)[0] == 0  # its own file: replaced by the new export
    assert is_boxseg_onnx(out) and out.stat().st_size > 10_000
    other = tmp_path / "other.onnx"
    other.write_bytes(b"someone's model")
    code, _, err = run_cli(["export", primary_model, "--out", other, "--no-check"], capsys)
    assert code == 2 and "did not write" in err and other.read_bytes() == b"someone's model"
    for bad in (tmp_path, tmp_path / "m.onnx" / "x.onnx"):  # a directory; a path under a file
        code, _, err = run_cli(["export", primary_model, "--out", bad, "--no-check"], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1, err


def test_url_store_resumes_and_is_not_overwritten(pipeline, tmp_path, capsys, monkeypatch):
    url = f"memory://boxseg-test-{tmp_path.name}/w.zarr"
    argv = ["gen-logits", pipeline["data"], "--model", pipeline["anc"], "--out", url,
            "--num-full", "4", "--device", "cpu", "--quiet"]  # fmt: skip
    assert run_cli(argv, capsys)[0] == 0
    store = LogitsStore.open(url, mode="r+")
    store.done[1] = False  # as if killed before image 1
    first = store.read(0).clone()

    import boxseg.store

    calls = []
    real = boxseg.store.LogitsStore.create
    monkeypatch.setattr(boxseg.store.LogitsStore, "create",
                        staticmethod(lambda *a, **k: calls.append(1) or real(*a, **k)))
    assert run_cli(argv, capsys)[0] == 0
    assert not calls  # resumed, not created anew
    again = LogitsStore.open(url)
    assert again.done_mask().all() and (again.read(0) == first).all()
    # a foreign zarr group at a URL is never replaced, even with --overwrite
    import zarr

    foreign = f"memory://boxseg-test-{tmp_path.name}/other.zarr"
    zarr.open_group(foreign, mode="w").attrs["mine"] = 1
    code, _, err = run_cli([*argv[:5], foreign, *argv[6:], "--overwrite"], capsys)
    assert code == 2 and "not a boxseg logits store" in err
    assert dict(zarr.open_group(foreign, mode="r").attrs) == {"mine": 1}


def test_output_dir_rules(tmp_path):
    made = output_dir(tmp_path / "a", "predict")
    assert (made / MARKER).is_file()
    (made / "x.png").write_bytes(b"1")
    assert output_dir(made, "predict") == made  # its own: reused
    with pytest.raises(Exception, match="not of viz"):
        output_dir(made, "viz")
    (tmp_path / "empty").mkdir()
    assert output_dir(tmp_path / "empty", "viz").is_dir()  # an empty directory is fine
    (tmp_path / "f").write_text("x")
    with pytest.raises(Exception, match="not a directory"):
        output_dir(tmp_path / "f", "viz")


def test_code_version_names_the_commit_of_this_checkout():
    import subprocess

    from boxseg import __version__
    from boxseg.run_dir import code_version

    version = code_version()
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, cwd=Path(__file__).parent)  # fmt: skip
    if head.returncode == 0:  # run from a checkout: its commit (with -dirty if changed)
        assert head.stdout.strip()[:7] in version
    else:
        assert version == __version__
