"""`boxseg demo` end to end on a tiny budget, and the data it generates."""

import json

import numpy as np

from boxseg.data.formats import open_dataset
from boxseg.data.synthetic import make_sample
from tests.conftest import run_cli


def test_demo_runs_every_stage_and_writes_results(tmp_path, capsys):
    code, out, err = run_cli(["demo", "--out", tmp_path / "d", "--iters", "3", "--device", "cpu",
                              "--data-seed", "1"], capsys)  # fmt: skip
    assert code == 0, err
    results = json.loads((tmp_path / "d" / "results.json").read_text())
    assert set(results) == {"ancillary", "f_only", "none", "seconds", "data_seed"}
    assert results["data_seed"] == 1 and "F + W (none)" in out
    for run in ("anc", "f_only", "none"):
        assert (tmp_path / "d" / run / "model.pt").is_file()
    config = json.loads((tmp_path / "d" / "none" / "config.json").read_text())
    assert config["self_corr"] == "none"  # the default mode, as the README commands use
    assert config["num_full"] == 8 and config["num_weak"] == 152
    assert config["train"]["batch_size"] == 4 and config["weak_batch_size"] == 4
    assert len(open_dataset(tmp_path / "d" / "data").ids("train")) == 160


def test_class_textures_and_plain_backgrounds():
    """class_texture: each class has its texture family (flat triangles, two-colour others);
    clutter off: the background is a horizontal gradient plus noise (no lines or blobs)."""
    from boxseg.data.synthetic import _class_texture

    rng = np.random.default_rng(3)
    for cls, colours in ((1, 2), (2, 2), (3, 1), (4, 2)):
        tex = _class_texture(rng, cls, 64, 64).reshape(-1, 3)
        assert len(np.unique(tex, axis=0)) == colours
    for _ in range(20):
        image, mask = make_sample(rng, 64, 64, class_texture=True, clutter=False)
        back = mask == 0
        columns = [image[back[:, x], x] for x in range(64) if back[:, x].sum() > 8]
        # the gradient plus N(0, 8) noise: nothing else is 60 levels off a column's mean
        assert max(np.abs(c - c.mean(0)).max() for c in columns) < 60
