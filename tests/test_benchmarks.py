"""The benchmark scripts users run: each completes on tiny settings and writes sane JSON, and the
steady-state rate arithmetic of the training-speed benchmark is right."""

from __future__ import annotations

import importlib
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_script(name: str, args: list[str], out: Path) -> dict:
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / name), *args, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(out.read_text())


@pytest.fixture
def speed_bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module("train_speed_bench")


def test_steady_rate_leaves_out_the_warmup_steps(tmp_path, speed_bench):
    # 2 images a step; step k ends at t_k seconds: a slow first step, then one step a second
    ends = {1: 10.0, 2: 11.0, 3: 12.0, 4: 13.0}
    lines = [json.dumps({"step": k, "img_per_s": 2 * k / t}) for k, t in ends.items()]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines))
    assert speed_bench.steady_steps_per_s(tmp_path / "metrics.jsonl", 1, 2) == pytest.approx(1.0)
    assert speed_bench.steady_steps_per_s(tmp_path / "metrics.jsonl", 0, 2) == pytest.approx(4 / 13)


def test_train_speed_bench_runs(tmp_path):
    args = ["--size", "32", "--crop", "32", "--batch-size", "2", "--steps", "4", "--warmup", "1",
            "--repeats", "1"]  # fmt: skip
    result = run_script("train_speed_bench.py", args, tmp_path / "speed.json")
    rows = {r["source"]: r for r in result["rows"]}
    assert set(rows) == {"store (float16, stride 4)", "online ancillary",
                         "in RAM (float32 full-res)"}  # fmt: skip
    store = rows["store (float16, stride 4)"]["steps_per_s"]
    for row in rows.values():
        assert math.isfinite(row["steps_per_s"]) and row["steps_per_s"] > 0
        assert row["store_vs_this"] == pytest.approx(store / row["steps_per_s"])
    assert result["anc_forward_s"] > 0
    assert result["store_online_bound"] == pytest.approx(1 + result["anc_forward_s"] * store)


def test_threads_bench_compares_one_process_with_several(tmp_path):
    result = run_script("threads_bench.py", ["--threads", "1", "--steps", "1"],
                        tmp_path / "threads.json")  # fmt: skip
    assert len(result["processes_s"]) == 1 and result["one_process_s"] > 0
    assert result["one_process_steps_per_s"] == pytest.approx(1 / result["one_process_s"])
    assert result["ratio"] == pytest.approx(
        sum(1 / m for m in result["processes_s"]) * result["one_process_s"]
    )


def test_gen_logits_bench_runs(tmp_path):
    result = run_script("gen_logits_bench.py", ["--limit", "8", "--repeats", "1"],
                        tmp_path / "gen.json")  # fmt: skip
    rows = {r["method"]: r for r in result["rows"]}
    assert result["images"] == 8
    assert rows["plain .npy loop"]["speed_vs_plain"] == pytest.approx(1.0)
    # float32 full resolution against float16 at stride 4: 2 x 16 = 32 times fewer values
    assert rows["boxseg gen-logits"]["size_vs_plain"] < 1 / 20
    assert all(r["img_per_s"] > 0 for r in rows.values())


def test_gpu_bench_smoke_on_cpu(tmp_path):
    args = ["--device", "cpu", "--size", "32", "--images", "16", "--steps", "2", "--batch-size",
            "2", "--backbones", "resnet18", "--amp", "off", "--workers", "0"]  # fmt: skip
    result = run_script("gpu_bench.py", args, tmp_path / "gpu.json")
    assert result["device"] == "cpu"
    stages = [(r["backbone"], r["stage"]) for r in result["rows"]]
    assert stages == [("resnet18", s) for s in ("train-anc", "gen-logits", "train-primary")]
    assert all(r["img_per_s"] > 0 and r["peak_gib"] is None for r in result["rows"])


def test_camvid_objects_dataset_is_the_folder_layout_with_component_boxes(tmp_path):
    """benchmarks/camvid_objects.py's conversion: CamVid's car/pedestrian/bicyclist become the
    objects, everything else background, void stays void; one COCO box per component."""
    import numpy as np

    from boxseg.data.boxes import BoxSpec, boxes_from_mask
    from boxseg.data.formats import open_dataset
    from boxseg.io import write_image, write_label_png

    sys.path.insert(0, str(BENCHMARKS))
    objects = importlib.import_module("camvid_objects")
    src = tmp_path / "camvid"
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 1)):
        (src / split).mkdir(parents=True)
        (src / f"{split}annot").mkdir()
        ids = [f"{split}{i}" for i in range(n)]
        for i in ids:
            mask = rng.integers(0, 8, (24, 32)).astype(np.uint8)  # stuff classes 0..7
            mask[2:8, 3:9], mask[12:20, 20:24], mask[0, :] = 8, 9, 11  # a car, a pedestrian
            write_image(src / split / f"{i}.png", rng.integers(0, 255, (24, 32, 3), np.uint8))
            write_label_png(src / f"{split}annot" / f"{i}.png", mask)
        (src / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    ds = open_dataset(objects.objects_dataset(src, tmp_path / "objects", ["train", "val"]))
    assert ds.layout == "folder" and ds.background == 0
    assert ds.class_names == ("background", "car", "pedestrian", "bicyclist")
    mask = ds.read_mask("train", "train1")
    assert (mask[2:8, 3:9] == 1).all() and (mask[12:20, 20:24] == 2).all()
    assert (mask[0] == 255).all() and set(np.unique(mask)) == {0, 1, 2, 255}
    boxes, labels = ds.read_boxes("train", "train1", BoxSpec())
    want_boxes, want_labels = boxes_from_mask(mask, 4, 16, background=0)
    np.testing.assert_array_equal(boxes, want_boxes)
    assert labels.tolist() == want_labels.tolist() == [1, 2]


def test_camvid_objects_groups_seeds_of_a_row():
    """camvid_objects.over_seeds: NAME_s{seed} rows become NAME's mean and sd over seeds;
    seedless rows (box-fill) and rows without a val score stay out."""
    sys.path.insert(0, str(BENCHMARKS))
    objects = importlib.import_module("camvid_objects")

    def row(w, v, car):
        return {"w_miou": w, "val_miou": v, "w_per_class_iou": {"car": car, "bicyclist": None}}

    rows = {"box": {"w_miou": 70.0, "w_per_class_iou": {}},
            "anc_constraint_s0": row(74.0, 75.0, 70.0), "anc_constraint_s2": row(76.0, 77.0, 80.0),
            "anc_wb_constraint_s1": row(75.0, 76.0, 60.0)}  # fmt: skip
    summary = objects.over_seeds(rows)
    assert set(summary) == {"anc_constraint", "anc_wb_constraint"}
    both = summary["anc_constraint"]
    assert both["seeds"] == [0, 2] and both["w_miou"]["mean"] == 75.0
    assert both["w_miou"]["sd"] == pytest.approx(2**0.5)  # n - 1
    assert both["val_miou"]["mean"] == 76.0 and both["w_per_class_iou"]["car"] == 75.0
    assert both["w_per_class_iou"]["bicyclist"] == 0.0
    assert summary["anc_wb_constraint"]["w_miou"] == {"mean": 75.0, "sd": 0.0}


def test_camvid_table_report_means_spreads_and_claims(monkeypatch):
    """benchmarks/camvid_table.py's summary: per row and per evaluation (in-domain, unseen
    footage) mean and sample sd over seeds, per-class means (None where a class is absent),
    the commits, and the claims of docs/results.md for each evaluation."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    table = importlib.import_module("camvid_table")

    def scores(miou, pole=1.0):
        return {"miou": miou, "per_class_iou": {"road": miou, "pole": pole}}

    def row(miou, pole=1.0, unseen=None):
        r = scores(miou, pole) | {"seconds": 1.0, "steps": 10, "w_steps": 10, "commit": "abc"}
        return r | ({"unseen": scores(unseen)} if unseen is not None else {})

    mious = {"f_only": (40, 42, 44), "full": (50, 50, 50), "none": (45, 46, 47),
             "linear": (47, 48, 49), "self_training": (41, 41, 41)}  # fmt: skip
    results = {f"{k}_s{s}": row(v[s], unseen=v[s] - 10) for k, v in mious.items()
               for s in range(3)}  # fmt: skip
    results["full_s0"]["unseen"] = scores(44)  # full on unseen footage: 44, 40, 40
    results["box_fill_s0"] = row(30, pole=None)
    out = table.report(results, [0, 1, 2])
    t, claims = out["table"], out["claims"]["in_domain"]
    assert t["f_only"]["in_domain"]["miou_mean"] == 42
    assert t["f_only"]["in_domain"]["miou_sd"] == pytest.approx(2.0)
    assert t["f_only"]["unseen"]["miou_mean"] == 32 and t["f_only"]["commits"] == ["abc"]
    assert t["box_fill"]["in_domain"]["per_class_iou"]["pole"] is None
    assert t["box_fill"]["unseen"] is None  # not scored there: no unseen column
    assert claims["full_minus_f_only"] == 8
    assert claims["best_semi_row"] == "linear"
    assert claims["gap_closed_by_best_semi"] == pytest.approx((48 - 42) / 8)
    assert claims["linear_minus_none"] == 2
    assert claims["best_box_minus_self_training"] == 7 and claims["spread_of_the_two"] == 2
    assert claims["max_row_sd"] == pytest.approx(2.0)
    unseen = out["claims"]["unseen"]
    full_unseen = (44 + 40 + 40) / 3
    assert unseen["full_minus_f_only"] == pytest.approx(full_unseen - 32)
    assert unseen["gap_closed_by_best_semi"] == pytest.approx((38 - 32) / (full_unseen - 32))


def test_camvid_table_refuses_rows_of_another_network_by_its_name(monkeypatch, tmp_path):
    """same_network: OUT's first network is recorded; another is refused with both named as a
    person would (`describe`), plus the widths that differ where the names are the same."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    table = importlib.import_module("camvid_table")
    from boxseg.models import ModelSpec

    unet = ModelSpec("resnet18", arch="unet")
    table.same_network(tmp_path, unet)
    table.same_network(tmp_path, unet)  # the same network again: its rows are reused
    with pytest.raises(SystemExit) as refused:
        table.same_network(tmp_path, ModelSpec("resnet50"))
    assert str(refused.value) == (
        f"{tmp_path}: its rows were made by smp unet resnet18; "
        "give boxseg DeepLabv3+ resnet50 its own --out"
    )
    with pytest.raises(SystemExit) as refused:
        table.same_network(tmp_path, ModelSpec("resnet18", decoder_channels=16, arch="unet"))
    assert str(refused.value) == (
        f"{tmp_path}: its rows were made by smp unet resnet18 (decoder_channels 256); "
        "give smp unet resnet18 (decoder_channels 16) its own --out"
    )


def test_camvid_table_store_summary_groups_seeds_and_pairs_with_the_default(monkeypatch):
    """The recipe check's W pseudo-label summary: a store kind is its row name without the
    seed (the seed may sit inside the name), seeds outside --seeds are left out, and each
    net's store is paired with the default store (`anc`) of the same seed."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    table = importlib.import_module("camvid_table")
    mious = {"store_anc_s0": 68.0, "store_anc_s1": 70.0, "store_anc_s9": 10.0,
             "store_anc_s0_prior2": 66.0, "store_anc_s1_prior2": 69.0,
             "store_anc_nearest_s0": 60.0, "store_anc_nearest_s1": 61.0,
             "store_box": 64.25, "store_self_s1": 40.0, "none_s0": 99.0}  # fmt: skip
    out = table.store_summary({k: {"miou": v} for k, v in mious.items()}, [0, 1])
    assert set(out) == {"anc", "anc_prior2", "anc_nearest", "box", "self"}
    assert out["anc"]["miou_mean"] == 69.0 and out["anc"]["miou_seeds"] == {0: 68.0, 1: 70.0}
    assert out["anc_prior2"]["minus_anc"] == {0: -2.0, 1: -1.0}
    assert out["anc_nearest"]["miou_sd"] == pytest.approx(0.5**0.5)
    assert out["anc_nearest"]["minus_anc"] == {0: -8.0, 1: -9.0}
    assert out["box"]["miou_seeds"] == {None: 64.25} and "minus_anc" not in out["box"]
    assert "minus_anc" not in out["anc"]


def test_rank_bench_signals_check_runs(pipeline, tmp_path):
    args = ["unused", "--store", str(pipeline["store"]), "--num-full", "4", "--k", "2,4"]
    result = run_script("rank_bench.py", args, tmp_path / "signals.json")
    assert result["images"] == 8
    corr = result["spearman_with_wrong_pixels"]
    assert {"entropy", "outside", "empty", "rare", "score", "boxes"} <= set(corr)
    assert all(-1 <= v <= 1 or math.isnan(v) for v in corr.values())
    for k, shares in result["top_k_share"].items():
        assert shares["random (expected)"] == pytest.approx(int(k) / 8)
        assert all(0 <= s <= 1 for s in shares.values())


def test_peer_ceiling_trains_the_peer_through_boxseg_trainer(tmp_path):
    pytest.importorskip("segmentation_models_pytorch")
    from boxseg.data.synthetic import write_synthetic

    data = write_synthetic(tmp_path / "syn", 8, 4, size=40, seed=1)
    args = [str(data), "--out", str(tmp_path / "o"), "--seeds", "0", "--unseen-video", "",
            "--scale", "1.0", "--iters", "2", "--batch-size", "2", "--crop", "32",
            "--device", "cpu"]  # fmt: skip
    result = run_script("peer_ceiling.py", args, tmp_path / "peer.json")
    row = result["rows"]["0"]
    assert row["network"].startswith("smp") and row["parameters"] > 1e6
    assert 0 <= result["summary"]["in_domain"]["mean"] <= 100
    assert (tmp_path / "o" / "runs" / "peer_smp_s0" / "config.json").is_file()


def test_rank_bench_scores_every_store_on_the_images_no_choice_moved(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    bench = importlib.import_module("rank_bench")
    weak = [f"w{i}" for i in range(8)]
    cells = {"rank": [{"chosen": ["w1", "w2"]}, {"chosen": ["w1", "w2"]}],
             "random0": [{"chosen": ["w2", "w6"]}], "entropy": []}  # fmt: skip
    assert bench.untouched_ids(weak, cells) == ["w0", "w3", "w4", "w5", "w7"]
    assert bench.untouched_ids(weak, {}) == weak


def test_box_noise_copies_keep_f_exact_and_make_w_imprecise(tmp_path):
    """benchmarks/box_noise.py: the segnet copy in the folder layout reads the boxes the segnet
    reader derives; a noisy copy changes W's boxes only (the same for the same draw), drops
    about the asked share, and its summary pairs each store with box-fill of the same draw."""
    import numpy as np

    from boxseg.data.boxes import BoxSpec
    from boxseg.data.formats import open_dataset
    from boxseg.io import write_image, write_label_png

    sys.path.insert(0, str(BENCHMARKS))
    bench = importlib.import_module("box_noise")
    src = tmp_path / "camvid"
    rng = np.random.default_rng(0)
    (src / "train").mkdir(parents=True)
    (src / "trainannot").mkdir()
    ids = [f"f{i}" for i in range(6)]
    for i in ids:
        mask = np.zeros((40, 48), np.uint8)
        for k in range(12):  # twelve car components and a road
            y, x = 3 * (k // 4) * 4, 2 + (k % 4) * 11
            mask[y + 1 : y + 8, x : x + 8] = 8
        mask[-4:] = 3
        write_image(src / "train" / f"{i}.png", rng.integers(0, 255, (40, 48, 3), np.uint8))
        write_label_png(src / "trainannot" / f"{i}.png", mask)
    (src / "train.txt").write_text("".join(f"{i}\n" for i in ids))
    base = bench.folder_from_segnet(src, tmp_path / "base", ["train"], min_area=4)
    seg, folder = open_dataset(src), open_dataset(base)
    for i in ids:
        want = seg.read_boxes("train", i, BoxSpec(4), seg.read_mask("train", i))
        got = folder.read_boxes("train", i, BoxSpec(4))
        np.testing.assert_array_equal(got[0], want[0])
        assert got[1].tolist() == want[1].tolist()
    weak = {"f3", "f4", "f5"}
    noise = bench.noise_of("mixed")
    counts = bench.noisy_copy(base, tmp_path / "mixed_d0", weak, noise, 0)
    again = bench.noisy_copy(base, tmp_path / "again", weak, noise, 0)
    assert counts == again and counts["w_boxes"] == 3 * 14  # 12 cars, road, sky (class 0)
    assert 0 < counts["w_boxes"] - counts["w_boxes_kept"] < 14  # about 10% of 42 dropped
    noisy = open_dataset(tmp_path / "mixed_d0")
    for i in ids:
        a, b = folder.read_boxes("train", i, BoxSpec()), noisy.read_boxes("train", i, BoxSpec())
        assert (i in weak) != (a[0].shape == b[0].shape and np.allclose(a[0], b[0]))
    rows = {
        "store_box_mixed_d0": {"miou": 40.0},
        "store_box_mixed_d1": {"miou": 42.0},
        "store_robust_half_mixed_s0": {"miou": 50.0},
        "store_robust_half_mixed_s1": {"miou": 51.0},
        "none_robust_half_mixed_s0": {"miou": 30.0, "unseen": {"miou": 20.0}},
    }
    summary = bench.summarise(rows, [0, 1])
    robust = summary["stores"]["robust_half_mixed"]
    assert robust["minus_box_fill"] == {0: 10.0, 1: 9.0}
    assert summary["primaries"]["none_robust_half_mixed"]["unseen"]["miou_mean"] == 20.0
    # primaries compared seed for seed: only seeds both rows have, each evaluation apart
    rows = {
        "none_anc_soft_void_mixed_s0": {"miou": 40.0, "unseen": {"miou": 20.0}},
        "none_anc_soft_void_mixed_s1": {"miou": 44.0, "unseen": {"miou": 22.0}},
        "conv_anc_half_void_mixed_s0": {"miou": 43.0, "unseen": {"miou": 19.0}},
        "conv_anc_half_void_mixed_s1": {"miou": 45.0, "unseen": {"miou": 25.0}},
        "linear_anc_soft_void_mixed_s1": {"miou": 41.0, "unseen": {"miou": 23.0}},
        "none_anc_exact_s0": {"miou": 41.5, "unseen": {"miou": 21.0}},
    }
    paired = bench.summarise(rows, [0, 1])["paired"]
    conv = paired["conv_anc_half_void_mixed minus none_anc_soft_void_mixed"]
    assert conv["val"]["miou_seeds"] == {0: 3.0, 1: 1.0} and conv["val"]["miou_mean"] == 2.0
    assert conv["unseen"]["miou_seeds"] == {0: -1.0, 1: 3.0}
    linear = paired["linear_anc_soft_void_mixed minus none_anc_soft_void_mixed"]
    assert linear["val"]["miou_seeds"] == {1: -3.0}
    assert paired["conv_anc_half_void_mixed minus none_anc_exact"]["val"]["miou_seeds"] == {0: 1.5}
    void = paired["none_anc_soft_void_mixed minus none_anc_exact"]
    assert void["val"]["miou_seeds"] == {0: -1.5} and void["unseen"]["miou_seeds"] == {0: -1.0}
    assert not any(k.startswith("none_anc_exact minus") for k in paired)


def test_realsize_bench_measures_every_stage_and_the_reads(tmp_path):
    # small: each stage's peak and baseline at 2 and 8 boxes, the ratios, the crop/whole reads
    args = "--size 256x128 --crop 96 --boxes 2,8 --repeats 2 --baseline inline".split()
    args += ["--json", str(tmp_path / "realsize.json")]
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "realsize_bench.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (version,) = json.loads((tmp_path / "realsize.json").read_text())["versions"]
    stages = ("weak-step", "prior-batch", "rank", "eval")
    rows = {(r["stage"], r["boxes"]): r for r in version["memory"]}
    assert set(rows) == {(s, n) for s in stages for n in (2, 8)}
    for (stage, n), r in rows.items():
        assert "error" not in r, r
        assert math.isfinite(r["peak_mb"]) and r["peak_mb"] >= r["baseline_mb"] > 100  # torch
        assert r["stage_mb"] == pytest.approx(r["peak_mb"] - r["baseline_mb"])
        if stage in ("weak-step", "prior-batch"):  # the boxes each of the 2 crops shows
            assert len(r["boxes_seen"]) == 2 and all(0 <= b <= n for b in r["boxes_seen"])
    for stage in stages:
        peaks = rows[(stage, 8)]["peak_mb"] / rows[(stage, 2)]["peak_mb"]
        assert version["ratios"][stage]["peak"] == pytest.approx(peaks)
    assert [r["store"] for r in version["reads"]] == ["ancillary net's logits", "box-fill"]
    for r in version["reads"]:
        assert r["crop_ms"] > 0 and r["whole_ms"] > 0
        assert r["ratio"] == pytest.approx(r["crop_ms"] / r["whole_ms"])
    table = done.stdout.splitlines()
    for title in ("(a) ", "(b) ", "(c) ", "(d) "):  # its 2-box, 8-box and 8/2 rows, numbers
        mine = [line for line in table if line.startswith(f"| {title}")]
        mine += [line for line in table if line.startswith(f"| **{title}")]
        assert len(mine) == 3 and not any("n/a" in line for line in mine), mine


@pytest.mark.slow
def test_gpu_check_dry_run_times_every_stage(tmp_path):
    """benchmarks/gpu_check.py --dry-run (issue 41's GPU check, on the CPU): every stage runs
    and reports its steps, rates over the images each step holds and a peak memory figure."""
    out = tmp_path / "gpu_check.json"
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gpu_check.py"), "--dry-run", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and result["data"]["boxes_per_image"] == 20
    rows = {r["stage"]: r for r in result["stages"]}
    per_step = {  # images a step at batch 2 (F; F + W), then gen-logits' W and eval's val
        "train-anc": 2,
        "train-anc --weak-boxes": 4,
        "gen-logits": 1,
        "train-primary store": 4,
        "train-primary online": 4,
        "train-anc half": 2,
        "gen-logits half": 1,
        "train-primary conv": 4,  # its one F-only step (3 // 3) is the first, left out
        "eval primary": 1,
        "eval ancillary": 1,
    }
    assert list(rows) == list(per_step)
    steps = {"gen-logits": 4, "gen-logits half": 4, "eval primary": 2, "eval ancillary": 2}
    steps["train-primary conv"] = 4  # 3 steps with W and a third of them before
    for name, r in rows.items():
        assert r["steps"] == steps.get(name, 3), name
        assert math.isfinite(r["steps_per_s"]) and r["steps_per_s"] > 0, name
        assert r["images_per_s"] == pytest.approx(per_step[name] * r["steps_per_s"]), name
        assert r["peak_gpu_gib"] is None and r["peak_rss_mib"] > 100, name  # torch alone
        assert 0 < r["seconds"] < 120, name
    lines = done.stdout.splitlines()
    for name in per_step:  # one table row a stage
        assert sum(line.startswith(f"| {name} | ") for line in lines) == 1, name
