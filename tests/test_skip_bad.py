"""--skip-bad: bad files are left out, counted and listed; without it nothing trains."""

import json
import shutil

from boxseg.store import LogitsStore
from tests.conftest import TINY_MODEL, TINY_TRAIN, run_cli


def test_skip_bad_through_the_pipeline(pipeline, tmp_path, capsys):
    data = tmp_path / "d"
    shutil.copytree(pipeline["data"], data)
    ids = (data / "train.txt").read_text().split()
    store_ids = LogitsStore.open(pipeline["store"]).image_ids
    full_ids = [i for i in ids if i not in store_ids]
    (data / "train" / f"{full_ids[0]}.png").write_bytes(b"broken")  # one bad F image
    (data / "trainannot" / f"{store_ids[1]}.png").write_bytes(b"broken")  # one bad W mask
    common = ["--num-full", "4", *TINY_MODEL, *TINY_TRAIN]

    code, _, err = run_cli(["train-anc", data, "--out", tmp_path / "a", *common], capsys)
    assert code == 2 and "--skip-bad" in err and not (tmp_path / "a" / "last.pt").exists()

    code, out, err = run_cli(["train-anc", data, "--out", tmp_path / "a", *common, "--skip-bad"],
                             capsys)  # fmt: skip
    assert code == 0, err
    assert "skipped 1 bad F images" in out
    report = json.loads((tmp_path / "a" / "skipped_full.json").read_text())
    assert [s["id"] for s in report["skipped"]] == [full_ids[0]]
    assert "not a readable image" in report["skipped"][0]["problem"]
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["num_full"] == 3  # F is drawn first (4 images), then the bad one left out

    store = tmp_path / "w.zarr"
    gen = ["gen-logits", data, "--model", tmp_path / "a" / "model.pt", "--out", store,
           "--num-full", "4", "--device", "cpu", "--quiet"]  # fmt: skip
    code, _, err = run_cli(gen, capsys)
    assert code == 2 and "annot" in err and "--skip-bad" in err
    code, _, err = run_cli([*gen, "--skip-bad"], capsys)
    assert code == 0, err
    s = LogitsStore.open(store)
    assert s.attrs["skipped_ids"] == [store_ids[1]] and store_ids[1] not in s.image_ids

    primary = ["train-primary", data, "--out", tmp_path / "p", "--logits", store, *common]
    code, _, err = run_cli(primary, capsys)  # F is checked first (conv judges usable F)
    assert code == 2 and "not a readable image" in err and "--skip-bad" in err
    bad_f = data / "train" / f"{full_ids[0]}.png"
    shutil.copy(pipeline["data"] / "train" / bad_f.name, bad_f)
    code, _, err = run_cli([*primary[:3], tmp_path / "p0", *primary[4:]], capsys)
    assert code == 2 and "left out 1 bad images" in err  # then the store's own record
    bad_f.write_bytes(b"broken")
    code, _, err = run_cli([*primary, "--skip-bad"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "p" / "skipped_full.json").read_text())["skipped"]
