"""The stages end to end on a tiny generated dataset, through the CLI."""

import json
import shutil

import numpy as np
import pytest
import torch

from boxseg.checkpoint import load_model
from boxseg.data.formats import open_dataset
from boxseg.data.split import SplitSpec, split_full_weak
from boxseg.selfcorr import alpha_at
from boxseg.store import LogitsStore
from tests.conftest import TINY_MODEL, TINY_TRAIN, run_cli

SPLIT = ["--num-full", "4", "--seed-split", "0"]


def test_cli_lists_every_stage(capsys):
    code, out, _ = run_cli(["--help"], capsys)
    assert code == 0
    for stage in ("train-anc", "gen-logits", "train-primary", "eval", "demo"):
        assert stage in out


def test_train_anc_writes_run(pipeline):
    run = pipeline["anc"].parent
    model, meta = load_model(pipeline["anc"], kind="ancillary")
    assert meta["kind"] == "ancillary" and meta["class_names"][0] == "background"
    assert meta["box_channels"] == 5 and meta["model"]["backbone"] == "resnet18"
    config = json.loads((run / "config.json").read_text())
    assert config["num_full"] == 4 and config["environment"]["torch"] == torch.__version__
    assert config["environment"]["cpu_threads"] == torch.get_num_threads()
    assert config["environment"]["commit"]  # the git commit, or the version outside a checkout
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in x for x in lines)
    # the logged score is the model's own: scoring model.pt again gives it back
    from boxseg.evaluate import evaluate_model

    again = evaluate_model(model, meta, open_dataset(pipeline["data"]), "val", "cpu", True)
    assert lines[-1]["val_miou"] == pytest.approx(again["miou"])


def test_store_matches_weak_set(pipeline):
    ds = open_dataset(pipeline["data"])
    _, weak = split_full_weak(ds.ids("train"), SplitSpec("train", 4, 0))
    s = LogitsStore.open(pipeline["store"])
    assert s.image_ids == weak and s.done_mask().all() and s.stride == 4
    assert s.logits.shape == (8, 5, 8, 8) and s.logits.dtype == np.float16
    assert len(s.attrs["checkpoint_sha256"]) == 64 and s.attrs["dataset"]["layout"] == "segnet"


def test_gen_logits_stores_what_the_model_predicts(pipeline):
    from boxseg.box_constraint import BoxConstraint, constrain_whole, rule_of
    from boxseg.cells import pool_logits
    from boxseg.data.boxes import BoxSpec
    from boxseg.data.formats import load_weak
    from boxseg.inference import predict_logits

    model, meta = load_model(pipeline["anc"], kind="ancillary")
    ds = open_dataset(pipeline["data"])
    s = LogitsStore.open(pipeline["store"])
    assert s.attrs["box_constraint"] == {"enabled": True, "prior": 0.0}
    w = load_weak(ds, "train", s.image_ids[3], BoxSpec.from_dict(meta["boxes"]))
    raw = predict_logits(model, meta, w.image, torch.device("cpu"), w.boxes, w.labels)
    # the cells hold what the net said; the boxes it saw are stored beside them
    torch.testing.assert_close(s.read(3), pool_logits(raw, 4), atol=1e-2, rtol=1e-2)
    boxes, labels = s.read_boxes(3)
    assert np.array_equal(boxes, w.boxes) and np.array_equal(labels, w.labels)
    rule = rule_of(meta, BoxConstraint())
    assert s.rule == rule
    ruled = constrain_whole(s.read_full(3, constrained=False), rule, w.boxes, w.labels)
    torch.testing.assert_close(s.read_full(3), ruled)  # read_full applies it at pixel level
    assert (ruled < -1e3).any()  # the constraint did rule something out here


def test_gen_logits_resumes(pipeline, tmp_path, capsys):
    store = tmp_path / "w.zarr"
    shutil.copytree(pipeline["store"], store)
    s = LogitsStore.open(store, mode="r+")
    before = s.logits[:]
    s.done[2:5] = False  # as if killed before these images
    s.logits[2:5] = np.zeros_like(before[2:5])
    code, _, err = run_cli(
        [
            "gen-logits",
            pipeline["data"],
            "--model",
            pipeline["anc"],
            "--out",
            store,
            *SPLIT,
            "--device",
            "cpu",
            "--quiet",
        ],
        capsys,
    )
    assert code == 0, err
    s = LogitsStore.open(store)
    assert s.done_mask().all()
    np.testing.assert_allclose(s.logits[:], before, atol=1e-2)


def test_train_primary_modes_and_eval(pipeline, tmp_path, capsys):
    for mode in ("none", "linear"):
        code, _, err = run_cli(
            [
                "train-primary",
                pipeline["data"],
                "--out",
                tmp_path / mode,
                "--logits",
                pipeline["store"],
                "--self-corr",
                mode,
                *SPLIT,
                *TINY_MODEL,
                *TINY_TRAIN,
            ],
            capsys,
        )
        assert code == 0, err
        lines = [
            json.loads(x) for x in (tmp_path / mode / "metrics.jsonl").read_text().splitlines()
        ]
        assert "loss_w" in lines[0] and "val_miou" in lines[-1]
    alphas = [
        json.loads(x)["alpha"]
        for x in (tmp_path / "linear" / "metrics.jsonl").read_text().splitlines()
        if "alpha" in x
    ]
    # logged at the last of the 3 steps: alpha_at(2, 3), 30 -> 0.5 geometrically over 2 steps
    assert alphas == [pytest.approx(alpha_at(2, 3))] and alphas[0] == pytest.approx(0.5)
    report = tmp_path / "eval.json"
    code, out, err = run_cli(
        [
            "eval",
            pipeline["data"],
            "--model",
            tmp_path / "linear" / "model.pt",
            "--split",
            "val",
            "--json",
            report,
            "--device",
            "cpu",
        ],
        capsys,
    )
    assert code == 0, err
    r = json.loads(report.read_text())
    assert set(r) == {"miou", "per_class_iou", "pixel_acc", "confusion", "model", "split"}
    assert len(r["confusion"]) == 5 and "mIoU" in out
    conf = np.array(r["confusion"], dtype=float)  # rows: truth, columns: prediction
    present = conf.sum(1) > 0
    tp, union = np.diag(conf), conf.sum(0) + conf.sum(1) - np.diag(conf)
    assert r["miou"] == pytest.approx(100 * (tp[present] / union[present]).mean(), abs=1e-6)
    assert sum(map(sum, r["confusion"])) == 4 * 32 * 32


def test_train_primary_never_reads_weak_masks(pipeline, tmp_path, capsys):
    """W's masks are deleted: training on F + W must still work (it cannot have used them)."""
    data = tmp_path / "data"
    shutil.copytree(pipeline["data"], data)
    ds = open_dataset(data)
    full, weak = split_full_weak(ds.ids("train"), SplitSpec("train", 4, 0))
    for image_id in weak:
        (data / "trainannot" / f"{image_id}.png").unlink()
    code, _, err = run_cli(
        [
            "train-primary",
            data,
            "--out",
            tmp_path / "run",
            "--logits",
            pipeline["store"],
            *SPLIT,
            *TINY_MODEL,
            *TINY_TRAIN,
        ],
        capsys,
    )
    assert code == 0, err
    # ...whereas a stage that needs masks of those images does fail on them
    (data / "trainannot" / f"{full[0]}.png").unlink()
    code, _, err = run_cli(
        ["train-primary", data, "--out", tmp_path / "run2", *SPLIT, *TINY_MODEL, *TINY_TRAIN],
        capsys,
    )
    assert code == 2 and f"{full[0]}.png" in err


def test_eval_pred_dir(pipeline, tmp_path, capsys):
    from boxseg.io import write_label_png

    ds = open_dataset(pipeline["data"])
    preds = tmp_path / "preds"
    for image_id in ds.ids("val"):  # perfect predictions, except void pixels
        mask = ds.read_mask("val", image_id)
        write_label_png(preds / f"{image_id}.png", np.where(mask == 255, 0, mask))
    code, _, err = run_cli(
        ["eval", pipeline["data"], "--pred-dir", preds, "--json", tmp_path / "r.json", "--quiet"],
        capsys,
    )
    assert code == 0, err
    assert json.loads((tmp_path / "r.json").read_text())["miou"] == 100.0
