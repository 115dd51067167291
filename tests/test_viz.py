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


def test_viz_draws_the_boxes_the_store_was_made_with(tiny_data, tmp_path, capsys):
    """A store made with --box-min-area 4 holds a 3x3 object's box (9 pixels, below the default
    16): viz draws it, as it shaped the pseudo-label."""
    import shutil

    from boxseg.data.boxes import boxes_from_mask
    from boxseg.data.split import SplitSpec, split_dataset
    from boxseg.io import write_label_png

    data = tmp_path / "d"
    shutil.copytree(tiny_data, data)
    ds = open_dataset(data)
    image_id = split_dataset(ds, SplitSpec("train", 4, 0))[1][0]
    mask = ds.read_mask("train", image_id)
    boxes, _ = boxes_from_mask(mask, ds.num_classes, background=ds.background)
    taken = np.zeros(mask.shape, bool)  # other boxes, grown by a pixel: their outlines
    for x1, y1, x2, y2 in boxes.astype(int):
        taken[max(y1 - 1, 0) : y2 + 1, max(x1 - 1, 0) : x2 + 1] = True
    y, x = next((y, x) for y in range(1, 27) for x in range(1, 27)
                if not taken[y - 1 : y + 4, x - 1 : x + 4].any())  # fmt: skip
    mask[y : y + 3, x : x + 3] = 2  # a 3x3 square
    write_label_png(ds.mask_path("train", image_id), mask)
    code, _, err = run_cli(["gen-logits", data, "--method", "box", "--box-min-area", "4",
                            "--num-full", "4", "--out", tmp_path / "w.zarr", "--quiet"],
                           capsys)  # fmt: skip
    assert code == 0, err
    code, _, err = run_cli(["viz", data, "--logits", tmp_path / "w.zarr", "--out", tmp_path / "v",
                            "--ids", image_id, "--device", "cpu"], capsys)  # fmt: skip
    assert code == 0, err
    zoom = 192 // 32
    drawn = read_image(tmp_path / "v" / f"{image_id}.png")[TITLE_H:, : 32 * zoom][::zoom, ::zoom]
    colour = palette(ds.num_classes)[2]
    ring = np.ones((3, 3), bool)
    ring[1, 1] = False  # the 1-pixel outline of a 3x3 box, around its centre
    assert (drawn[y : y + 3, x : x + 3][ring] == colour).all()
    image = ds.read_image("train", image_id)
    np.testing.assert_array_equal(drawn[y + 1, x + 1], image[y + 1, x + 1])
