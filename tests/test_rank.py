"""`boxseg rank`: the ranking's signals, its order, diversity, its list file, and bad inputs."""

import csv

import numpy as np
import pytest
import torch

from boxseg.box_constraint import ConstraintRule
from boxseg.data.boxes import BoxSpec
from boxseg.data.formats import load_full, open_dataset
from boxseg.data.split import SplitSpec, split_dataset, split_full_weak
from boxseg.errors import BoxsegError
from boxseg.rank import (
    HEADER,
    RankWeights,
    diverse_order,
    empty_boxes,
    percentiles,
    rank_store,
    read_ranking,
)
from boxseg.store import LogitsStore
from tests.conftest import TINY_MODEL, TINY_TRAIN, run_cli

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
    assert all(0 <= g <= 1 for g in gains)
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
    assert all(0 <= float(r["disagree"]) <= 1 for r in rows)
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
