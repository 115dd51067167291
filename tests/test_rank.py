"""`boxseg rank`: the ranking's signals, its order, diversity, its list file, and bad inputs."""

import csv
import json
import re
import shutil
import tracemalloc
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import boxseg.rank as rk
from boxseg.box_constraint import BoxEvidence, ConstraintRule
from boxseg.data.boxes import BoxSpec
from boxseg.data.formats import load_full, open_dataset
from boxseg.data.split import SplitSpec, split_dataset, split_full_weak
from boxseg.errors import BoxsegError
from boxseg.rank import (
    HEADER,
    RankOptions,
    RankWeights,
    diverse_order,
    empty_boxes,
    image_signals,
    percentiles,
    rank_store,
    read_ranking,
)
from boxseg.store import LogitsStore
from tests.conftest import TINY_MODEL, TINY_TRAIN, run_cli
from tests.helpers import rank_reference

SPLIT = SplitSpec("train", 4, 0)


def known_store(data, location, wrong: str | None, stride: int = 1) -> LogitsStore:
    """A store of W (SPLIT) whose logits are the true masks, confidently (one-hot x 8), with
    the boxes derived from the masks; image `wrong` instead says, everywhere, a class that
    none of its boxes allows (what a badly wrong ancillary net gives)."""
    ds = open_dataset(data)
    _, weak = split_dataset(ds, SPLIT)
    samples = [load_full(ds, "train", i, BoxSpec(4)) for i in weak]
    sizes = np.array([s.mask.shape for s in samples], np.int32)
    rule = ConstraintRule.of(ds.num_classes, ds.background, None)
    store = LogitsStore.create(str(location), weak, sizes, list(ds.class_names), stride,
                               {"method": "anc"}, rule=rule)  # fmt: skip
    for i, s in enumerate(samples):
        truth = torch.from_numpy(np.where(s.mask == 255, 0, s.mask)).long()
        if s.id == wrong:
            absent = next(c for c in range(1, ds.num_classes) if c not in set(s.labels.tolist()))
            truth = torch.full_like(truth, absent)
        logits = torch.nn.functional.one_hot(truth, ds.num_classes).permute(2, 0, 1) * 8.0
        store.write(i, logits, (s.boxes, s.labels))
    return store


def wrong_image(data) -> str:
    """A W image with at least one object box (so a wrong pseudo-label is visible in it)."""
    ds = open_dataset(data)
    for image_id in split_dataset(ds, SPLIT)[1][3:]:
        if len(load_full(ds, "train", image_id, BoxSpec(4)).labels):
            return image_id
    raise AssertionError("no W image with boxes")


@pytest.mark.parametrize("diversity", [0.0, 1.0])
def test_image_whose_pseudo_label_contradicts_its_boxes_ranks_first(tiny_data, tmp_path,
                                                                    diversity):  # fmt: skip
    wrong = wrong_image(tiny_data)
    store = known_store(tiny_data, tmp_path / "s.zarr", wrong)
    ds = open_dataset(tiny_data)
    full, _ = split_dataset(ds, SPLIT)
    rows = rank_store(ds, "train", full, store, RankWeights(), diversity)
    assert rows[0]["id"] == wrong
    first, rest = rows[0], rows[1:]
    assert first["outside"] > 0.5 > max(r["outside"] for r in rest)  # the net defied its boxes
    assert first["empty"] > max(r["empty"] or 0 for r in rest)  # and left its boxes empty
    assert first["disagree"] is None  # no primary model given
    assert [r["rank"] for r in rows] == list(range(1, len(rows) + 1))
    assert sorted(r["id"] for r in rows) == sorted(store.image_ids)


def test_ranking_is_deterministic_and_written_as_csv(pipeline, tmp_path, capsys):
    args = ["rank", pipeline["data"], "--logits", pipeline["store"], "--num-full", "4",
            "--device", "cpu", "--quiet"]  # fmt: skip
    assert run_cli([*args, "--out", tmp_path / "a.csv"], capsys)[0] == 0
    assert run_cli([*args, "--out", tmp_path / "b.csv"], capsys)[0] == 0
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    rows = list(csv.DictReader((tmp_path / "a.csv").open()))
    assert list(rows[0]) == list(HEADER)
    store = LogitsStore.open(pipeline["store"])
    assert sorted(r["id"] for r in rows) == sorted(store.image_ids)
    gains = [float(r["gain"]) for r in rows]
    scores = [float(r["score"]) for r in rows]
    assert gains[0] == pytest.approx(scores[0])  # nothing chosen yet: no diversity discount
    assert gains == sorted(gains, reverse=True)  # greedy: each pick the best gain left
    assert all(g <= s + 1e-9 for g, s in zip(gains, scores, strict=True))
    assert run_cli([*args, "--out", tmp_path / "a.csv"], capsys)[0] == 0  # its own: replaced


def test_diversity_keeps_near_duplicates_apart():
    # five near-duplicate frames of one scene score highest; five distinct scenes score less
    rng = np.random.default_rng(0)
    scene = torch.rand(48, generator=torch.Generator().manual_seed(1))
    dupes = scene + torch.from_numpy(rng.normal(0, 0.01, (5, 48))).float()
    others = torch.rand(5, 48, generator=torch.Generator().manual_seed(2)) * 3
    layouts = torch.cat([dupes, others])
    scores = np.array([0.95, 0.94, 0.93, 0.92, 0.91, 0.6, 0.55, 0.5, 0.45, 0.4])
    plain, _ = diverse_order(scores, layouts, 0.0)
    assert plain[:5] == [0, 1, 2, 3, 4]  # by score alone the duplicates fill the top 5
    order, gains = diverse_order(scores, layouts, 1.0)
    assert order[0] == 0
    assert set(order[1:6]) == {5, 6, 7, 8, 9}  # then the distinct scenes, not the copies
    assert gains[0] == pytest.approx(0.95)
    assert sorted(order) == list(range(10))


def test_percentiles_and_empty_boxes():
    np.testing.assert_allclose(percentiles([3.0, 1.0, 2.0]), [1.0, 0.0, 0.5])
    np.testing.assert_allclose(percentiles([1.0, 1.0, 2.0, None]), [0.5, 0.5, 1.0, 0.0])
    assert percentiles([None, None]) is None
    # class 1's boxes usually fill 0.8; a box it fills 0.2 is 0.6 short; class 2 is thin
    fills = [[(1, 0.8), (2, 0.1)], [(1, 0.2)], [(1, 0.8), (2, 0.1)], []]
    assert empty_boxes(fills) == pytest.approx([0.0, 0.6, 0.0, None])


def test_top_list_feeds_train_anc_unchanged(pipeline, tmp_path, capsys):
    lst = tmp_path / "next.txt"
    code, out, err = run_cli(["rank", pipeline["data"], "--logits", pipeline["store"],
                              "--num-full", "4", "--out", tmp_path / "r.csv", "--top", "3",
                              "--list", lst, "--device", "cpu"], capsys)  # fmt: skip
    assert code == 0, err
    assert f"--full-list {lst}" in out
    ds = open_dataset(pipeline["data"])
    full, _ = split_dataset(ds, SPLIT)
    top = read_ranking(tmp_path / "r.csv", 3)
    listed = lst.read_text().split()
    assert set(listed) == set(full) | set(top) and len(listed) == 7
    assert listed == [i for i in ds.ids("train") if i in set(listed)]  # in the split's order
    new_full, new_weak = split_full_weak(ds.ids("train"), SplitSpec("train", full_list=lst))
    assert set(new_full) == set(listed) and not set(new_weak) & set(listed)
    code, _, err = run_cli(["train-anc", pipeline["data"], "--out", tmp_path / "anc",
                            "--full-list", lst, *TINY_MODEL, *TINY_TRAIN], capsys)  # fmt: skip
    assert code == 0, err
    # the eval and viz of the ranking's first images
    code, _, err = run_cli(["eval", pipeline["data"], "--split", "train", "--logits",
                            pipeline["store"], "--ranking", tmp_path / "r.csv", "--top", "2",
                            "--json", tmp_path / "e.json", "--quiet"], capsys)  # fmt: skip
    assert code == 0, err
    import json

    assert json.loads((tmp_path / "e.json").read_text())["images_scored"] == 2
    code, _, err = run_cli(["viz", pipeline["data"], "--logits", pipeline["store"], "--out",
                            tmp_path / "v", "--ranking", tmp_path / "r.csv", "--num", "2",
                            "--device", "cpu"], capsys)  # fmt: skip
    assert code == 0, err
    assert sorted(p.stem for p in (tmp_path / "v").glob("*.png")) == sorted(top[:2])


def test_primary_model_adds_its_disagreement(pipeline, tmp_path, capsys):
    code, _, err = run_cli(["train-primary", pipeline["data"], "--out", tmp_path / "p",
                            "--logits", pipeline["store"], "--num-full", "4", *TINY_MODEL,
                            *TINY_TRAIN], capsys)  # fmt: skip
    assert code == 0, err
    code, _, err = run_cli(["rank", pipeline["data"], "--logits", pipeline["store"], "--num-full",
                            "4", "--out", tmp_path / "r.csv", "--model", tmp_path / "p" /
                            "model.pt", "--device", "cpu", "--quiet"], capsys)  # fmt: skip
    assert code == 0, err
    rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    # the share of pixels where the primary net's argmax differs from the pseudo-label (up to
    # a few near-tie pixels: the forward passes here are one image at a time)
    from boxseg.checkpoint import load_model
    from boxseg.inference import predict_batch

    model, meta = load_model(tmp_path / "p" / "model.pt", kind="primary", device="cpu")
    store, ds = LogitsStore.open(pipeline["store"]), open_dataset(pipeline["data"])
    for r in rows:
        pseudo = store.read_full(store.index(r["id"])).argmax(0)
        net = predict_batch(model, meta, [ds.read_image("train", r["id"])], "cpu")[0].argmax(0)
        assert float(r["disagree"]) == pytest.approx(float((net != pseudo).float().mean()),
                                                     abs=3 / pseudo.numel())  # fmt: skip
    code, _, err = run_cli(["rank", pipeline["data"], "--logits", pipeline["store"], "--num-full",
                            "4", "--out", tmp_path / "x.csv", "--model", pipeline["anc"],
                            "--device", "cpu"], capsys)  # fmt: skip
    assert code == 2 and "primary model is needed" in err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--num-full", "5"], "was it made with other split options?"),
        (["--num-full", "4", "--top", "2"], "--top and --list go together"),
        (["--num-full", "4", "--top", "99", "--list", "L.txt"], "--top 99: must be between"),
        (["--num-full", "4", "--weights", "entropy=x"], "is not name=number"),
        (["--num-full", "4", "--weights", "colour=1"], "unknown signal 'colour'"),
        (["--num-full", "4", "--weights", "entropy=0,outside=0,empty=0,disagree=0,rare=0"],
         "at least one weight"),  # fmt: skip
        (["--num-full", "4", "--diversity", "2"], "--diversity 2.0: must be between 0 and 1"),
    ],
)
def test_bad_inputs_give_one_line(pipeline, tmp_path, capsys, extra, message, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["rank", pipeline["data"], "--logits", pipeline["store"],
                            "--out", tmp_path / "r.csv", *extra], capsys)  # fmt: skip
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r.csv").exists()


def test_store_of_another_dataset_and_files_it_did_not_write(pipeline, tmp_path, capsys):
    other = tmp_path / "other.zarr"
    LogitsStore.create(str(other), ["a"], np.array([[8, 8]], np.int32), ["x", "y"], 1, {})
    args = ["rank", pipeline["data"], "--num-full", "4"]
    code, _, err = run_cli([*args, "--logits", other, "--out", tmp_path / "r.csv"], capsys)
    assert code == 2 and "classes" in err and len(err.strip().splitlines()) == 1
    mine = tmp_path / "notes.csv"
    mine.write_text("my,own,table\n")
    code, _, err = run_cli([*args, "--logits", pipeline["store"], "--out", mine], capsys)
    assert code == 2 and "did not write" in err and mine.read_text() == "my,own,table\n"
    lst = tmp_path / "full.txt"
    lst.write_text("mine\n")
    code, _, err = run_cli([*args, "--logits", pipeline["store"], "--out", tmp_path / "r.csv",
                            "--top", "1", "--list", lst], capsys)  # fmt: skip
    assert code == 2 and "--overwrite" in err and lst.read_text() == "mine\n"
    code, _, err = run_cli([*args, "--logits", pipeline["store"], "--out", tmp_path / "r.csv",
                            "--top", "1", "--list", lst, "--overwrite"], capsys)  # fmt: skip
    assert code == 0, err
    assert len(lst.read_text().split()) == 5
    code, _, err = run_cli(["eval", pipeline["data"], "--logits", pipeline["store"], "--ranking",
                            mine], capsys)  # fmt: skip
    assert code == 2 and "not a ranking written by boxseg rank" in err
    code, _, err = run_cli(["eval", pipeline["data"], "--model", pipeline["anc"], "--ranking",
                            tmp_path / "r.csv"], capsys)  # fmt: skip
    assert code == 2 and "--ranking: not used without --logits" in err
    with pytest.raises(BoxsegError, match="--top 0"):
        read_ranking(tmp_path / "r.csv", 0)


@pytest.mark.parametrize("source", ["yolo", "voc"])
def test_ranks_a_folder_dataset_whose_w_has_no_masks(tmp_path, capsys, source):
    # the folder layout: F = the images with masks, W = the rest (boxes from YOLO / VOC XML
    # files, no masks), ranked from a box-fill store (a painted store, not a net's)
    from tests.data.test_box_files import write_box_folder

    root = write_box_folder(tmp_path / "f", source)
    code, _, err = run_cli(["gen-logits", root, "--method", "box", "--out", tmp_path / "w.zarr",
                            "--stride", "1", "--quiet"], capsys)  # fmt: skip
    assert code == 0, err
    code, _, err = run_cli(["rank", root, "--logits", tmp_path / "w.zarr", "--out",
                            tmp_path / "r.csv", "--top", "2", "--list", tmp_path / "l.txt",
                            "--device", "cpu", "--quiet"], capsys)  # fmt: skip
    assert code == 0, err
    rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    store = LogitsStore.open(tmp_path / "w.zarr")
    assert sorted(r["id"] for r in rows) == sorted(store.image_ids)
    assert all(r["classes"].split() and int(r["boxes"]) == 2 for r in rows)
    listed = (tmp_path / "l.txt").read_text().split()
    ds = open_dataset(root)
    masked = [i for i in ds.ids("train") if ds.has_mask("train", i)]
    assert set(listed) == set(masked) | {r["id"] for r in rows[:2]}


def _one_image_store(location, logits: torch.Tensor, boxes, labels, rule=None) -> LogitsStore:
    """A store of one image ("a", classes bg / cat / dog) holding `logits` and its boxes."""
    sizes = np.array([logits.shape[1:]], np.int32)
    store = LogitsStore.create(str(location), ["a"], sizes, ["bg", "cat", "dog"], 1,
                               {"method": "anc"}, rule=rule)  # fmt: skip
    store.write(0, logits, (np.asarray(boxes, np.float32).reshape(-1, 4),
                            np.asarray(labels, np.int64)))  # fmt: skip
    return store


def test_disagree_is_the_share_of_pixels_where_the_primary_net_differs(tmp_path):
    truth = torch.zeros(8, 10, dtype=torch.long)
    truth[2:5, 3:8], truth[6:, :2] = 1, 2
    logits = torch.nn.functional.one_hot(truth, 3).permute(2, 0, 1).float() * 8
    store = _one_image_store(tmp_path / "s.zarr", logits, [], [])
    weights = torch.ones(3)
    assert image_signals(store, 0, weights, logits * 0.5).values["disagree"] == 0.0
    other = truth.clone()
    other[0, :7] = 2  # 7 of the 80 pixels differ
    primary = torch.nn.functional.one_hot(other, 3).permute(2, 0, 1).float()
    assert image_signals(store, 0, weights, primary).values["disagree"] == pytest.approx(7 / 80)


def test_a_box_covering_no_pixel_is_left_out_even_beside_one_that_counts(tmp_path):
    # one cat box that counts; two dog boxes that cover no pixel (a zero-width click, a box
    # clipped away at the right edge): the signals are those of the cat box alone
    truth = torch.zeros(12, 16, dtype=torch.long)
    truth[2:7, 3:9] = 1
    logits = torch.nn.functional.one_hot(truth, 3).permute(2, 0, 1).float() * 8
    logits[1, 2:7, 3:5] = 0  # the cat box is not all cat: its fill is below 1
    rule = ConstraintRule.of(3, 0, None)
    cat = [[3, 2, 9, 7]]
    both = _one_image_store(tmp_path / "a.zarr", logits, cat + [[10, 3, 10, 9], [16, 0, 16, 5]],
                            [1, 2, 2], rule)  # fmt: skip
    alone = _one_image_store(tmp_path / "b.zarr", logits, cat, [1], rule)
    weights = torch.tensor([0.5, 2.0, 4.0])
    got, want = image_signals(both, 0, weights), image_signals(alone, 0, weights)
    assert got.values == want.values and got.fills == want.fills and got.boxes == 1
    assert got.classes == want.classes == ["bg", "cat"]  # the dog boxes hold no pixel
    torch.testing.assert_close(got.layout, want.layout)


def _add_click_boxes(root, source: str, ids) -> None:
    """A cat box covering no pixel in the box files of `ids`: COCO bbox [x, y, 0, h] (a click),
    VOC XML xmin = xmax = 0 (a click on the first column, written 0-based: nothing is left
    once it is clipped to the image)."""
    if source == "coco":
        doc = json.loads((root / "boxes.json").read_text())
        stems = {im["id"]: im["file_name"].split(".")[0] for im in doc["images"]}
        image = {stem: i for i, stem in stems.items()}
        for n, image_id in enumerate(ids):
            doc["annotations"].append({"id": 900 + n, "image_id": image[image_id],
                                       "category_id": 7, "bbox": [10, 20, 0, 5]})  # fmt: skip
        (root / "boxes.json").write_text(json.dumps(doc))
        return
    from tests.data.test_box_files import OBJ

    for image_id in ids:
        path = root / "annotations" / f"{image_id}.xml"
        click = OBJ.format(name="cat", x1=0, y1=20, x2=0, y2=25)
        path.write_text(path.read_text().replace("</annotation>", click + "</annotation>"))


@pytest.mark.parametrize("source", ["coco", "voc_xml"])
def test_rank_of_a_box_file_with_a_click_box_is_the_ranking_without_it(tmp_path, capsys,
                                                                        source):  # fmt: skip
    from tests.data.test_box_files import write_box_folder
    from tests.data.test_folder import write_folder

    clean = tmp_path / "clean"
    if source == "coco":
        write_folder(clean, n=8, with_png=(0, 1), with_polygons=(2,))  # W: img3, img4, img5
    else:
        write_box_folder(clean, source)  # W: img3 .. img7
    clicked = tmp_path / "clicked"
    shutil.copytree(clean, clicked)
    _add_click_boxes(clicked, source, ["img3", "img5"])
    csvs = []
    for root in (clean, clicked):
        store, ranking = tmp_path / f"{root.name}.zarr", tmp_path / f"{root.name}.csv"
        code, out, err = run_cli(["gen-logits", root, "--method", "box", "--out", store,
                                  "--stride", "1"], capsys)  # fmt: skip
        assert code == 0, err
        left_out = "; 2 covering no pixel left out)" in out
        assert left_out == (root == clicked), out  # said once, in the check's summary line
        code, _, err = run_cli(["rank", root, "--logits", store, "--out", ranking, "--device",
                                "cpu", "--quiet"], capsys)  # fmt: skip
        assert code == 0, err
        csvs.append(ranking.read_text())
    assert csvs[0] == csvs[1]
    stored = LogitsStore.open(tmp_path / "clicked.zarr")
    assert len(stored.read_boxes(stored.index("img3"))[1]) == 3  # the store keeps the file's


def test_rare_ranks_first_an_image_holding_a_class_f_lacks(tmp_path, capsys):
    # F's masks show cats only; W: cats, and one image (not the first) with a dog of the
    # same size: a class F lacks is rarer than any it has
    from boxseg.io import write_image, write_label_png

    root = tmp_path / "f"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("background\ncat\ndog\n")
    doc = {"images": [], "annotations": [],
           "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]}  # fmt: skip
    for k in range(7):
        category = 2 if k == 5 else 1
        write_image(root / "images" / f"img{k}.png", np.full((32, 32, 3), 40 * k, np.uint8))
        doc["images"].append({"id": k, "file_name": f"img{k}.png"})
        doc["annotations"].append({"id": k, "image_id": k, "category_id": category,
                                   "bbox": [4 + k, 6, 12, 10]})  # fmt: skip
        if k < 3:  # F
            mask = np.zeros((32, 32), np.uint8)
            mask[6:16, 4 + k : 16 + k] = 1
            write_label_png(root / "masks" / f"img{k}.png", mask)
    (root / "boxes.json").write_text(json.dumps(doc))
    (root / "train.txt").write_text("".join(f"img{k}\n" for k in range(7)))
    code, _, err = run_cli(["gen-logits", root, "--method", "box", "--out", tmp_path / "w.zarr",
                            "--stride", "1", "--quiet"], capsys)  # fmt: skip
    assert code == 0, err
    code, _, err = run_cli(["rank", root, "--logits", tmp_path / "w.zarr", "--out",
                            tmp_path / "r.csv", "--weights",
                            "rare=1,entropy=0,outside=0,empty=0,disagree=0", "--diversity", "0",
                            "--device", "cpu", "--quiet"], capsys)  # fmt: skip
    assert code == 0, err
    rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert [r["id"] for r in rows][0] == "img5"
    assert float(rows[0]["rare"]) > max(float(r["rare"]) for r in rows[1:])


def test_the_cli_passes_one_options_value(tiny_data, tmp_path, capsys, monkeypatch):
    """Every rank flag lands in its field of RankOptions."""
    seen = []
    monkeypatch.setattr(rk, "run_rank", lambda opts, quiet: seen.append((opts, quiet)) or [])
    monkeypatch.chdir(tmp_path)
    flags = (
        "--logits w.zarr --out r.csv --model p.pt --top 2 --list l.txt --weights rare=0.5 "
        "--diversity 0.25 --num-full 4 --seed-split 1 --device cpu --overwrite --quiet"
    )
    code, _, err = run_cli(["rank", tiny_data, *flags.split()], capsys)
    assert code == 0, err
    expected = RankOptions(
        tiny_data,
        "w.zarr",
        SplitSpec("train", 4, 1),
        out=Path("r.csv"),
        model_path=Path("p.pt"),
        top=2,
        list_out=Path("l.txt"),
        weights=RankWeights(rare=0.5),
        diversity=0.25,
        device="cpu",
        overwrite=True,
    )
    assert seen == [(expected, True)]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"top": 2}, "--top and --list go together"),
        ({"list_out": Path("l.txt")}, "--top and --list go together"),
        ({"diversity": -0.5}, "--diversity -0.5: must be between 0 and 1"),
    ],
)
def test_options_that_cannot_work_are_refused_before_anything_is_read(tmp_path, change, message):
    """validate() runs first: the option is named, not the missing dataset or store."""
    opts = RankOptions(tmp_path / "no-data", str(tmp_path / "w.zarr"), SPLIT, tmp_path / "r.csv")
    with pytest.raises(BoxsegError, match=re.escape(message)):
        rk.run_rank(replace(opts, **change), quiet=True)


# --- per-box statistics from summed-area tables: today's values, memory without B x H x W ---


def _random_boxes(rng, h: int, w: int, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """n boxes with fractional corners in an h x w image, many overlapping, of k classes (the
    background's too); the first few the edge cases: the whole image, a click (zero width),
    one over the right and bottom edges, one thinner than a pixel, one left of the image."""
    x1, y1 = rng.uniform(-0.9, w, n), rng.uniform(-0.9, h, n)
    x2, y2 = x1 + rng.uniform(0, 0.7 * w, n), y1 + rng.uniform(0, 0.7 * h, n)
    boxes = np.stack([x1, y1, np.minimum(x2, w + 0.9), np.minimum(y2, h + 0.9)], 1)
    edge_cases = [
        [0, 0, w, h],
        [3.5, 2.0, 3.5, 9.0],
        [w - 4.3, h - 2.6, w + 0.9, h + 0.9],
        [5.2, 4.1, 5.6, 4.4],
        [-0.9, 1.0, 0.0, 6.0],
    ]
    boxes[: min(n, len(edge_cases))] = np.reshape(edge_cases[:n], (-1, 4))
    return boxes.astype(np.float32), rng.integers(0, k, n)


RULES = {  # name: (rule of k classes, the store's method: "box" stores may hold void)
    "none": (lambda k: None, "anc"),
    "background": (lambda k: ConstraintRule.of(k, 0, None), "box"),
    "free classes": (lambda k: ConstraintRule.of(k, 0, [1, 2]), "anc"),
    "void uncovered": (lambda k: ConstraintRule.of(k, None, None, void_uncovered=True), "box"),
    "prior": (lambda k: ConstraintRule.of(k, 0, None, prior=2.0), "box"),
}


def _random_store(
    location, seed: int, rule_name: str, h: int, w: int, n: int, k: int = 5, stride: int = 1
) -> LogitsStore:
    """A store of one h x w image ("a") with random logits (void pixels where its method may
    hold them) and n random boxes (`_random_boxes`)."""
    rng = np.random.default_rng(seed)
    make_rule, method = RULES[rule_name]
    store = LogitsStore.create(
        str(location),
        ["a"],
        np.array([[h, w]], np.int32),
        [f"c{c}" for c in range(k)],
        stride,
        {"method": method},
        rule=make_rule(k),
    )
    logits = torch.from_numpy(rng.normal(0, 4, (k, h, w))).float()
    if method == "box":
        logits[:, torch.from_numpy(rng.random((h, w)) < 0.1)] = torch.nan
    store.write(0, logits, _random_boxes(rng, h, w, n, k))
    return store


def _same_signals(got: rk.ImageSignals, want: rk.ImageSignals) -> None:
    assert got.values == want.values  # bitwise
    assert got.fills == want.fills
    assert got.classes == want.classes and got.boxes == want.boxes
    assert torch.equal(got.layout, want.layout)


@pytest.mark.parametrize("rule_name", list(RULES))
@pytest.mark.parametrize(
    "seed, h, w, n, stride",
    [(0, 17, 23, 40, 1), (1, 32, 32, 7, 2), (2, 9, 40, 1, 1), (3, 24, 16, 0, 1)],
)
def test_signals_are_todays_on_random_images(tmp_path, rule_name, seed, h, w, n, stride):
    """The summed-area tables give bitwise today's signals (tests/helpers/rank_reference.py):
    fills, the classes an image holds, every signal, on random logits and boxes."""
    store = _random_store(tmp_path / "s.zarr", seed, rule_name, h, w, n, stride=stride)
    weights = torch.from_numpy(np.random.default_rng(seed).uniform(0.5, 3, 5)).float()
    primary = torch.randn(5, h, w, generator=torch.Generator().manual_seed(seed))
    got = image_signals(store, 0, weights, primary)
    want = rank_reference.image_signals(store, 0, weights, primary)
    _same_signals(got, want)
    assert n < 2 or len(got.fills) >= 2  # (the boxes were seen: the comparison says something)


@pytest.mark.parametrize("seed", range(6))
def test_box_cover_and_holds_are_todays(seed):
    """Each class's union of boxes (`box_cover`) is today's K x H x W einsum, plane by plane,
    and the shares each class holds are equal."""
    rng = np.random.default_rng(seed)
    h, w, k = int(rng.integers(5, 30)), int(rng.integers(5, 30)), 4
    boxes, labels = _random_boxes(rng, h, w, int(rng.integers(1, 60)), k)
    ev = BoxEvidence.whole([boxes], [labels], h, w)
    in_rows, in_cols, kept = rank_reference.box_masks(ev)
    covered = torch.einsum("bk,bh,bw->khw", F.one_hot(kept, k).float(), in_rows, in_cols) > 0
    rects, got_labels = rk.box_rects(ev)
    assert torch.equal(got_labels, kept)
    for c in range(k):
        assert torch.equal(rk.box_cover(rects[got_labels == c], h, w), covered[c])
    pred = torch.from_numpy(rng.integers(0, k, (h, w)))
    valid = torch.from_numpy(rng.random((h, w)) < 0.8)
    for rule in (None, ConstraintRule.of(k, 0, None), ConstraintRule.of(k, 0, [1])):
        got = rk.holds(pred, valid, rects, got_labels, k, rule)
        assert torch.equal(got, rank_reference.holds(pred, valid, covered, rule))


def test_summed_area_counts_each_box(tmp_path):
    mask = torch.zeros(6, 7, dtype=torch.bool)
    mask[1:4, 2:6] = True
    mask[5, 0] = True
    table = rk.summed_area(mask)
    rects = torch.tensor([[0, 0, 7, 6], [2, 1, 6, 4], [3, 2, 4, 3], [0, 4, 7, 6], [4, 4, 4, 6]])
    assert rk.rect_sums(table, rects).tolist() == [13, 12, 1, 1, 0]


def test_rankings_are_todays(tiny_data, tmp_path, monkeypatch):
    """rank_store's rows (order, scores, gains, signals) equal those of today's signals, on a
    store of W with random logits and boxes."""
    ds = open_dataset(tiny_data)
    full, weak = split_dataset(ds, SPLIT)
    k, rng = ds.num_classes, np.random.default_rng(7)
    sizes = np.array([ds.read_mask("train", i).shape for i in weak], np.int32)
    rule = ConstraintRule.of(k, ds.background, None)
    store = LogitsStore.create(
        str(tmp_path / "w.zarr"), weak, sizes, list(ds.class_names), 2, {"method": "anc"}, rule=rule
    )
    for i, (h, w) in enumerate(sizes):
        logits = torch.from_numpy(rng.normal(0, 3, (k, h, w))).float()
        store.write(i, logits, _random_boxes(rng, h, w, int(rng.integers(0, 30)), k))
    for diversity in (0.0, 1.0):
        got = rank_store(ds, "train", full, store, RankWeights(), diversity)
        with monkeypatch.context() as m:
            m.setattr(rk, "image_signals", rank_reference.image_signals)
            want = rank_store(ds, "train", full, store, RankWeights(), diversity)
        assert got == want
        assert len({r["score"] for r in got}) > len(got) // 2  # (scores that tell images apart)


class LargestOutput(TorchDispatchMode):
    """While active: the most elements of any tensor a torch op returns (the dispatcher sees
    every op, those inside einsum too)."""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.numel = max(self.numel, t.numel())
        return out


@pytest.mark.parametrize("rule_name", ["none", "background"])
def test_no_tensor_or_array_of_boxes_times_pixels(tmp_path, rule_name):
    """150 boxes on a 64 x 64 image: no torch op returns B x H x W elements (B: the boxes that
    count; today's code did: the recorder sees it) and no numpy allocation reaches B x H x W
    bytes (tracemalloc traces numpy's buffers). The box prior (`prior` > 0) is
    box_constraint's, left out here."""
    h, w = 64, 64
    store = _random_store(tmp_path / "s.zarr", 0, rule_name, h, w, 150, k=3)
    weights = torch.ones(3)
    tracemalloc.start()
    try:
        with LargestOutput() as after:
            signals = image_signals(store, 0, weights)
        numpy_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    b = signals.boxes
    assert b > 140
    with LargestOutput() as before:
        rank_reference.image_signals(store, 0, weights)
    assert before.numel >= b * h * w
    assert after.numel < b * h * w // 10
    assert numpy_peak < b * h * w
