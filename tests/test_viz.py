"""`boxseg viz` pictures: panels, sizes and the colours of known classes."""

import numpy as np

from boxseg.data.formats import open_dataset
from boxseg.io import read_image
from boxseg.predict import palette
from boxseg.store import LogitsStore
from boxseg.viz import TITLE_H
from tests.conftest import TINY_MODEL, TINY_TRAIN, run_cli


def test_viz_writes_one_picture_per_image_with_all_panels(pipeline, tmp_path, capsys):
    code, _, err = run_cli(["train-primary", pipeline["data"], "--out", tmp_path / "p",
                            "--logits", pipeline["store"], "--num-full", "4", *TINY_MODEL,
                            *TINY_TRAIN], capsys)  # fmt: skip
    assert code == 0, err
    store = LogitsStore.open(pipeline["store"])
    ids = store.image_ids[:2]
    code, out, err = run_cli(["viz", pipeline["data"], "--logits", pipeline["store"], "--out",
                              tmp_path / "v", "--ids", ",".join(ids), "--model",
                              tmp_path / "p" / "model.pt", "--device", "cpu"], capsys)  # fmt: skip
    assert code == 0, err
    assert sorted(p.stem for p in (tmp_path / "v").glob("*.png")) == sorted(ids)
    picture = read_image(tmp_path / "v" / f"{ids[0]}.png")
    zoom = 192 // 32
    side = 32 * zoom
    assert picture.shape == (TITLE_H + side, 5 * side + 4 * 4, 3)  # boxes, label, conf, q, truth
    truth = picture[TITLE_H:, -side:][::zoom, ::zoom]  # the last panel, back at 32x32
    ds = open_dataset(pipeline["data"])
    mask = ds.read_mask("train", ids[0])
    colours = palette(ds.num_classes)
    np.testing.assert_array_equal(truth, colours[mask])

    code, _, err = run_cli(["viz", pipeline["data"], "--logits", pipeline["store"], "--out",
                            tmp_path / "w", "--ids", "nosuch"], capsys)  # fmt: skip
    assert code == 2 and "no logits for 'nosuch'" in err
