"""`boxseg split` writes deterministic F / W / half-F lists that the stages accept."""

import json

from boxseg.data.split import SplitSpec, fraction_of, split_full_weak
from tests.conftest import run_cli


def test_split_lists_are_deterministic_disjoint_and_match_num_full(tiny_data, tmp_path, capsys):
    args = ["split", tiny_data, "--num-full", "5", "--seed-split", "3"]
    assert run_cli([*args, "--out", tmp_path / "a"], capsys)[0] == 0
    assert run_cli([*args, "--out", tmp_path / "b"], capsys)[0] == 0
    lists = {n: (tmp_path / "a" / f"{n}.txt").read_text().split() for n in
             ("full", "weak", "full_half")}  # fmt: skip
    for n, ids in lists.items():
        assert (tmp_path / "b" / f"{n}.txt").read_text().split() == ids
    train = (tiny_data / "train.txt").read_text().split()
    assert len(lists["full"]) == 5 and sorted(lists["full"] + lists["weak"]) == sorted(train)
    assert set(lists["full_half"]) <= set(lists["full"]) and len(lists["full_half"]) in (2, 3)
    full, weak = split_full_weak(train, SplitSpec("train", 5, 3))  # what --num-full 5 draws
    assert (full, weak) == (lists["full"], lists["weak"])
    assert lists["full_half"] == fraction_of(full, 0.5, 3)
    info = json.loads((tmp_path / "a" / "split.json").read_text())
    assert info["num_full"] == 5 and info["split"]["seed"] == 3
    # the list is accepted by every stage as --full-list: same F as --num-full 5 --seed-split 3
    listed = split_full_weak(train, SplitSpec("train", full_list=tmp_path / "a" / "full.txt"))
    assert listed == (full, weak)
