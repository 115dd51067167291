"""Box-consistent logits (box_constraint.py): the rule, and the probe of issue 21: a confident
net through every read path at strides 1/2/4/8, float16 and int8: every box pixel keeps its
class, no pixel outside gains it."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from boxseg.box_constraint import (
    NEG,
    BoxConstraint,
    BoxEvidence,
    ConstraintRule,
    rule_of,
)
from boxseg.data.boxes import box_pixels
from boxseg.errors import BoxsegError

BOXES = np.array([[2, 2, 14, 12], [8, 4, 10, 16], [20, 0, 32, 32]], np.float32)  # xyxy


def _inside(box, h, w) -> np.ndarray:
    m = np.zeros((h, w), bool)
    x1, y1, x2, y2 = box_pixels(np.asarray(box)[None], h, w)[0]
    m[y1:y2, x1:x2] = True
    return m


def _bias(boxes, labels, k, h, w, background, box_classes=None, prior=0.0) -> torch.Tensor:
    rule = ConstraintRule.of(k, background, box_classes, prior)
    return rule.bias(BoxEvidence.whole([boxes], [np.asarray(labels)], h, w))[0]


def _allowed(boxes, labels, k, h, w, background) -> torch.Tensor:
    return _bias(boxes, labels, k, h, w, background) == 0


@pytest.mark.parametrize("background", [None, 0])
def test_a_class_never_wins_outside_its_boxes(background):
    """Random (large) logits: after the bias, a boxed class wins only inside one of its boxes;
    with a background class, background may win anywhere."""
    k, h, w = 4, 24, 32
    labels = np.array([1, 2, 1])
    bias = _bias(BOXES, labels, k, h, w, background)
    torch.manual_seed(0)
    covered = np.zeros((h, w), bool)
    for box in BOXES:
        covered |= _inside(box, h, w)
    for _ in range(20):
        logits = torch.randn(k, h, w) * 50
        winner = (logits + bias).argmax(0).numpy()
        for c in (1, 2, 3):
            own = np.zeros((h, w), bool)
            for box, label in zip(BOXES, labels, strict=True):
                own |= _inside(box, h, w) if label == c else False
            allowed = own | (~covered if background is None else False)
            assert not ((winner == c) & ~allowed).any(), c
    if background is not None:  # background is allowed inside the boxes too
        assert (bias[background] == 0).all()


def test_no_background_uncovered_pixels_are_left_to_the_net():
    bias = _bias(BOXES[:1], [1], 3, 16, 16, None)
    outside = torch.from_numpy(~_inside(BOXES[0], 16, 16))
    assert (bias[:, outside] == 0).all()  # every class allowed where no box is
    inside = ~outside
    assert (bias[1, inside] == 0).all() and (bias[[0, 2]][:, inside] == -NEG).all()


def test_classes_without_boxes_are_allowed_everywhere():
    # classes 1 and 2 get boxes (--box-classes), classes 0 and 3 (stuff) never do
    bias = _bias(BOXES, [1, 2, 1], 4, 24, 32, None, box_classes=(1, 2))
    assert (bias[[0, 3]] == 0).all()
    assert (bias[1] == -NEG).any() and (bias[2] == -NEG).any()
    every = _bias(BOXES, [1, 2, 1], 4, 24, 32, None)  # default: all get boxes
    assert (every[0] == -NEG).any()


def test_prior_goes_to_the_smallest_covering_box():
    bias = _bias(BOXES[:2], [1, 2], 3, 16, 16, None, prior=4.0)
    # box 1 (2x12) is smaller than box 0 (12x10): where they overlap, class 2 gets the bonus
    assert bias[2, 6, 9] == 4.0 and bias[1, 6, 9] == 0.0
    assert bias[1, 3, 3] == 4.0  # only box 0 covers this pixel
    assert (bias[:, 15, 0] == 0).all()  # outside all boxes: no prior


def test_rule_of_follows_the_model_and_the_option():
    meta = {"kind": "ancillary", "class_names": ["a", "b"], "background": None,
            "boxes": {"classes": [1]}}  # fmt: skip
    assert rule_of(meta, BoxConstraint(False)) is None
    assert rule_of(meta | {"kind": "primary"}, BoxConstraint()) is None
    rule = rule_of(meta, BoxConstraint(True, 2.0))
    assert ConstraintRule.from_dict(rule.to_dict()) == rule
    b = rule.bias(BoxEvidence.whole([np.array([[0, 0, 2, 2]], np.float32)], [np.array([1])], 4, 4))
    assert b.shape == (1, 2, 4, 4) and b[0, 1, 0, 0] == 2.0 and (b[0, 0] == 0).all()
    with pytest.raises(BoxsegError, match="--box-prior"):
        BoxConstraint(True, -1.0).validate()


def test_box_pixels_is_one_rule_for_every_consumer():
    """A box covers every pixel it overlaps; a box thinner than a pixel still covers one; float
    noise at a whole pixel does not add a column; the encoder raster, box-fill and the
    constraint all cover exactly those pixels."""
    from boxseg.box_labels import box_fill
    from boxseg.data.boxes import rasterize_boxes

    boxes = np.array([[10, 10, 20, 20], [10.6, 3, 10.9, 4], [9.9999997, 0.2, 19.9999, 5.5]],
                     np.float32)  # fmt: skip
    assert box_pixels(boxes, 32, 32).tolist() == [[10, 10, 20, 20], [10, 3, 11, 4],
                                                  [10, 0, 20, 6]]  # fmt: skip
    for k in range(3):
        cover = _inside(boxes[k], 32, 32)
        raster = rasterize_boxes(boxes[k : k + 1], np.array([1]), 3, 32, 32, 0)[1] > 0
        filled = box_fill(32, 32, boxes[k : k + 1], np.array([1]), 0) == 1
        allowed = _allowed(boxes[k : k + 1], [1], 3, 32, 32, 0)[1].numpy()
        assert (raster == cover).all() and (filled == cover).all() and (allowed == cover).all()


EDGE_BOXES = [  # (box xyxy, the pixels [x1, x2) x [y1, y2) it covers, or None: no pixel)
    ([10.6, 3, 10.9, 4], (10, 3, 11, 4)),  # thinner than a pixel: the pixel it lies in
    ([30.5, 29.2, 32, 32], (30, 29, 32, 32)),  # at the image's bottom-right border
    ([0, 0, 0.4, 32], (0, 0, 1, 32)),  # sub-pixel wide, at the left border, full height
    ([5, 5, 5, 9], None),  # zero width: a click
    ([3, 7, 9, 7], None),  # zero height
    ([32, 4, 32, 8], None),  # on the right edge: nothing left inside the image
]


@pytest.mark.parametrize("box, pixels", EDGE_BOXES)
def test_every_consumer_agrees_on_which_pixels_a_box_covers(box, pixels):
    """The encoder's raster, box-fill, the constraint, its prior, the weak-box losses and rank
    cover the pixels `pixel_boxes` gives (a box covering none: no pixel, and not counted)."""
    from boxseg.box_labels import box_fill
    from boxseg.box_losses import projection_loss
    from boxseg.data.boxes import pixel_boxes, rasterize_boxes
    from boxseg.rank import box_cover, box_rects

    h = w = 32
    boxes, labels = np.array([box], np.float32), np.array([1])
    want = np.zeros((h, w), bool)
    if pixels is not None:
        x1, y1, x2, y2 = pixels
        want[y1:y2, x1:x2] = True
    px = pixel_boxes(boxes, labels, h, w)
    assert px.keep.tolist() == [pixels is not None] and px.dropped == int(pixels is None)
    assert px.bounds.tolist() == ([] if pixels is None else [list(pixels)])
    raster = rasterize_boxes(boxes, labels, 3, h, w, 0)[1] > 0
    filled = box_fill(h, w, boxes, labels, 0) == 1
    bias = _bias(boxes, labels, 3, h, w, 0, prior=3.0)
    allowed, prior = (bias[1] > -NEG / 2).numpy(), (bias[1] == 3.0).numpy()
    ev = BoxEvidence.whole([boxes], [labels], h, w)
    rects, kept = box_rects(ev)
    ranked = box_cover(rects, h, w).numpy()
    for got in (raster, filled, allowed, prior, ranked):
        np.testing.assert_array_equal(got, want)
    assert len(kept) == int(pixels is not None)
    # the tightness term: nothing to ask of a box it leaves out; for the others, zero for a
    # shape filling the box's pixels, above zero once their last column or first row is empty
    probs = torch.from_numpy(np.stack([~want, want, np.zeros_like(want)])).float()[None]
    assert projection_loss(probs, ev) == 0
    if pixels is not None:
        for cut in ((slice(None), slice(x2 - 1, x2)), (slice(y1, y1 + 1), slice(None))):
            part = probs.clone()
            part[0, 1][cut] = 0
            assert projection_loss(part, ev) > 0


# --- the probe: a confident net ("class 1, logit +10" everywhere) through every read path ---

K = 3


class Confident(nn.Module):
    """A stand-in ancillary net that says `values` (K logits) at every pixel."""

    def __init__(self, values=(0.0, 10.0, 0.0)):
        super().__init__()
        self.register_buffer("values", torch.tensor(values).view(1, -1, 1, 1))

    def forward(self, x, boxes=None):
        return self.values.expand(x.shape[0], -1, *x.shape[-2:]).clone()


def _probe_boxes(rng, h, w, n, lo=3, hi=20):
    """n random boxes of 3-20 px (float corners), class 1."""
    bw, bh = rng.integers(lo, hi + 1, n), rng.integers(lo, hi + 1, n)
    x1, y1 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
    return np.stack([x1, y1, x1 + bw, y1 + bh], 1).astype(np.float32), np.ones(n, np.int64)


def _count(pred: np.ndarray, boxes: np.ndarray, h: int, w: int, rows=None, cols=None):
    """(box pixels that lost class 1, outside pixels that gained it), judging each output pixel
    by its source pixel (rows/cols: the source row/column of each output row/column)."""
    inside = np.zeros((h, w), bool)
    for b in boxes:
        inside |= _inside(b, h, w)
    rows = np.arange(h) if rows is None else rows
    cols = np.arange(w) if cols is None else cols
    shown = (rows[:, None] >= 0) & (cols[None, :] >= 0)
    src = inside[np.ix_(np.clip(rows, 0, None), np.clip(cols, 0, None))] & shown
    lost = int((src & (pred != 1)).sum())
    gained = int((~src & shown & (pred == 1)).sum())
    return lost, gained


CASES = [(s, d) for s in (1, 2, 4, 8) for d in ("float16", "int8")]


def _store(tmp_path, stride, dtype, images, net=None):
    """A store written the way gen-logits writes it: the net's logits pooled, its boxes beside
    them, the rule in the attributes (no background: uncovered pixels left to the net)."""
    from boxseg.store import LogitsStore

    net = net or Confident()
    sizes = np.array([im[0].shape[:2] for im in images], np.int32)
    rule = ConstraintRule.of(K, 0, None)
    store = LogitsStore.create(str(tmp_path / f"s{stride}{dtype}.zarr"),
                               [f"i{k}" for k in range(len(images))], sizes,
                               ["bg", "thing", "other"], stride, {}, dtype, rule)  # fmt: skip
    for k, (image, boxes, labels) in enumerate(images):
        x = torch.zeros(1, 3, *image.shape[:2])
        store.write(k, net(x)[0], (boxes, labels))
    return LogitsStore.open(store.location)


def _images(seed=0, n=3, h=48, w=64, boxes=12):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        b, lab = _probe_boxes(rng, h, w, boxes)
        # the fixed boxes of the issue: 12x12, a 3x30 pole, a 2x2 speck
        b = np.concatenate([b, [[5, 5, 17, 17], [40, 10, 43, 40], [30, 2, 32, 4]]]).astype(
            np.float32
        )
        out.append((rng.integers(0, 255, (h, w, 3), dtype=np.uint8), b,
                    np.ones(len(b), np.int64)))  # fmt: skip
    return out


@pytest.mark.parametrize("stride,dtype", CASES)
def test_probe_whole_image_reads_are_exact(tmp_path, stride, dtype):
    """read_full (eval --logits, viz) and the pseudo-labels --save-pred writes: 0 box pixels
    lost, 0 outside pixels gained, at every stride and dtype."""
    from boxseg.evaluate import pseudo_labels

    images = _images()
    store = _store(tmp_path, stride, dtype, images)
    for k, (image, boxes, _) in enumerate(images):
        pred = pseudo_labels(store, k)
        assert _count(pred, boxes, *image.shape[:2]) == (0, 0)
        raw = store.read_full(k, constrained=False).argmax(0).numpy()
        assert (raw == 1).all()  # the store keeps what the net said


@pytest.mark.parametrize("stride,dtype", CASES)
def test_probe_training_crops_from_the_store_are_exact(tmp_path, stride, dtype):
    """W's training crops (scaled 0.5-2, shifted, flipped, padded): every crop pixel whose
    source pixel is in a box keeps class 1, every other shown pixel does not get it."""
    from boxseg.data.sampling import collate
    from boxseg.data.torchsets import AugmentSpec
    from boxseg.weak_targets import StoredLogits, WeakTrainSet, constrained

    images = _images()
    store = _store(tmp_path, stride, dtype, images)

    class Images:  # the W set reads images only
        def read_image(self, split, image_id):
            return images[int(image_id[1:])][0]

    aug = AugmentSpec(40, (0.5, 2.0))
    w_set = WeakTrainSet(Images(), "train", store.image_ids, store.location, aug, (0, 0, 0),
                         (1, 1, 1))  # fmt: skip
    source = constrained(StoredLogits(store.may_hold_void), store.rule)
    for seed in range(6):
        items = [w_set[(k, seed * 10 + k)] for k in range(len(images))]
        batch = collate(items)
        q = source(batch).argmax(1).numpy()
        for k, (image, boxes, _) in enumerate(images):
            rows, cols = batch["src_rows"][k].numpy(), batch["src_cols"][k].numpy()
            assert _count(q[k], boxes, *image.shape[:2], rows, cols) == (0, 0), (seed, k)


@pytest.mark.parametrize("stride,dtype", [(1, "float16"), (4, "float16"), (8, "int8")])
def test_probe_conv_f_inputs_and_online_targets_are_exact(stride, dtype):
    """Conv's F inputs (the net online, made like a store's) and online W targets: the same
    rule at the same pixels."""
    from boxseg.data.sampling import collate
    from boxseg.data.torchsets import crop_evidence
    from boxseg.data.transforms import draw_params
    from boxseg.selfcorr import f_anc_logits

    images = _images(seed=1)
    rule = ConstraintRule.of(K, 0, None)
    for like in ((stride, dtype), None):
        source = f_anc_logits(Confident(), like, rule)
        rng = np.random.default_rng(stride)
        for _ in range(4):
            items = []
            for image, boxes, labels in images:
                p = draw_params(rng, *image.shape[:2], 40, (0.5, 2.0), True)
                items.append(
                    {"image": torch.zeros(3, 40, 40), "boxes": torch.zeros(1, 40, 40)}
                    | crop_evidence(boxes, labels, *image.shape[:2], p, 40)
                )
            batch = collate(items)
            q = source(batch).argmax(1).numpy()
            for k, (image, boxes, _) in enumerate(images):
                rows, cols = batch["src_rows"][k].numpy(), batch["src_cols"][k].numpy()
                assert _count(q[k], boxes, *image.shape[:2], rows, cols) == (0, 0)


@pytest.mark.parametrize("scales", [(1.0,), (0.5, 1.0, 1.5)])
def test_probe_predict_and_tta_are_exact(scales):
    """predict / eval of an ancillary model (and its test-time scales): exact at pixel level."""
    from boxseg.inference import predict_logits

    meta = {"kind": "ancillary", "class_names": ["bg", "thing", "other"], "background": 0,
            "mean": (0, 0, 0), "std": (1, 1, 1), "boxes": {}}  # fmt: skip
    rule = rule_of(meta, BoxConstraint())
    for image, boxes, labels in _images(seed=2):
        out = predict_logits(Confident(), meta, image, torch.device("cpu"), boxes, labels,
                             scales, flip=len(scales) > 1, constraint=rule)  # fmt: skip
        assert _count(out.argmax(0).numpy(), boxes, *image.shape[:2]) == (0, 0)


def test_tta_keeps_thin_boxes_in_the_encoder_raster_below_scale_one():
    """At scale 0.5 a 1-pixel box still marks a pixel of the box raster the net is given."""
    from boxseg.inference import predict_logits

    seen = []

    class Spy(Confident):
        def forward(self, x, boxes=None):
            seen.append(boxes[0, 1].sum().item())
            return super().forward(x, boxes)

    meta = {"kind": "ancillary", "class_names": ["bg", "thing", "other"], "background": 0,
            "mean": (0, 0, 0), "std": (1, 1, 1), "boxes": {}}  # fmt: skip
    image = np.zeros((32, 32, 3), np.uint8)
    predict_logits(Spy(), meta, image, torch.device("cpu"), np.array([[7, 4, 8, 20]], np.float32),
                   np.array([1]), (0.5,))  # fmt: skip
    assert seen and seen[0] > 0


@pytest.mark.parametrize("stride", [1, 4, 8])
def test_stored_and_online_q_agree_at_box_edges(tmp_path, stride):
    """A net that says the same (random) logits at every pixel: stored q (any stride) and
    online q are equal at every pixel of every crop, box edges included (float16's rounding
    the only difference)."""
    from boxseg.data.sampling import collate
    from boxseg.data.torchsets import AugmentSpec
    from boxseg.weak_targets import OnlineAncillary, StoredLogits, WeakTrainSet, constrained

    net = Confident((0.3, 1.2, 0.9))  # class 1 would win everywhere without the boxes
    images = _images(seed=3)
    store = _store(tmp_path, stride, "float16", images, net)

    class Images:
        def read_image(self, split, image_id):
            return images[int(image_id[1:])][0]

    aug = AugmentSpec(40, (0.5, 2.0))
    w_set = WeakTrainSet(Images(), "train", store.image_ids, store.location, aug, (0, 0, 0),
                         (1, 1, 1))  # fmt: skip
    stored = constrained(StoredLogits(False), store.rule)
    online = constrained(OnlineAncillary(net), store.rule)
    for seed in range(4):
        batch = collate([w_set[(k, seed * 7 + k)] for k in range(len(images))])
        batch["boxes"] = torch.zeros(len(images), 1, 40, 40)
        q_s = torch.softmax(stored(batch), 1)
        q_o = torch.softmax(online(batch), 1)
        valid = batch["valid"][:, None].expand_as(q_s)
        assert (q_s - q_o)[valid].abs().max() < 2e-3  # at every pixel, edges included


def test_voc_part_boxes_do_not_replace_their_object(tmp_path):
    """A VOC person with <part> boxes (head, hand) keeps its own box."""
    from boxseg.data.box_files import read_voc_xml

    xml = tmp_path / "a.xml"
    xml.write_text("""<annotation><object><name>person</name>
<bndbox><xmin>10</xmin><ymin>20</ymin><xmax>60</xmax><ymax>120</ymax></bndbox>
<part><name>head</name><bndbox><xmin>30</xmin><ymin>21</ymin><xmax>45</xmax><ymax>40</ymax>
</bndbox></part>
<part><name>hand</name><bndbox><xmin>11</xmin><ymin>60</ymin><xmax>18</xmax><ymax>70</ymax>
</bndbox></part></object>
<object><name>dog</name><bndbox><xmin>70</xmin><ymin>80</ymin><xmax>90</xmax><ymax>100</ymax>
</bndbox></object></annotation>""")
    boxes, labels = read_voc_xml(xml, ["background", "person", "dog"])
    assert boxes.tolist() == [[9, 19, 60, 120], [69, 79, 90, 100]]
    assert labels.tolist() == [1, 2]


def test_cli_store_records_the_rule_and_eval_applies_it(pipeline, tmp_path, capsys):
    """gen-logits --no-box-constraint / --box-prior are recorded in the store; a store with the
    constraint never labels a pixel with a class none of its boxes covers; eval of the
    ancillary model takes the same flags."""
    from boxseg.data.boxes import BoxSpec
    from boxseg.data.formats import load_weak, open_dataset
    from boxseg.store import LogitsStore
    from tests.conftest import run_cli

    off = tmp_path / "off.zarr"
    code, _, err = run_cli(["gen-logits", pipeline["data"], "--model", pipeline["anc"], "--out",
                            off, "--num-full", "4", "--device", "cpu", "--quiet",
                            "--no-box-constraint"], capsys)  # fmt: skip
    assert code == 0, err
    assert LogitsStore.open(off).attrs["box_constraint"] == {"enabled": False, "prior": 0.0}
    on = LogitsStore.open(pipeline["store"])
    ds = open_dataset(pipeline["data"])
    assert LogitsStore.open(off).rule is None and on.rule is not None
    for i, image_id in enumerate(on.image_ids):
        s = load_weak(ds, "train", image_id, BoxSpec(4))
        allowed = _allowed(s.boxes, s.labels, 5, 32, 32, 0)
        winner = on.read_full(i).argmax(0)
        assert allowed.gather(0, winner[None]).all()  # every pixel's winner is allowed there
    # resuming with another rule is refused, not mixed
    again = ["gen-logits", pipeline["data"], "--model", pipeline["anc"], "--out", off,
             "--num-full", "4", "--device", "cpu", "--quiet"]  # fmt: skip
    code, _, err = run_cli(again, capsys)
    assert code == 2 and "box constraint" in err
    scores = {}
    for flags in ([], ["--no-box-constraint"]):
        out = tmp_path / f"eval{len(flags)}.json"
        code, _, err = run_cli(["eval", pipeline["data"], "--model", pipeline["anc"], "--split",
                                "val", "--device", "cpu", "--quiet", "--json", out, *flags],
                               capsys)  # fmt: skip
        assert code == 0, err
        scores[len(flags)] = json.loads(out.read_text())["pixel_acc"]
    # boxes derived from the masks always allow the true class, so the constraint only changes
    # pixels whose raw winner was wrong: accuracy cannot drop (tiny components aside)
    assert scores[0] >= scores[1] - 0.5, scores


def test_train_anc_with_the_constraint_in_its_loss(tiny_data, tmp_path, capsys):
    from tests.conftest import TINY_MODEL, TINY_TRAIN, run_cli

    code, _, err = run_cli(["train-anc", tiny_data, "--out", tmp_path / "a", "--num-full", "4",
                            "--box-constraint-loss", "--val-split", "", *TINY_MODEL,
                            *TINY_TRAIN], capsys)  # fmt: skip
    assert code == 0, err
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["constraint_loss"] is True
    losses = [
        json.loads(x)["loss"]
        for x in (tmp_path / "a" / "metrics.jsonl").read_text().split("\n")
        if x
    ]
    assert all(np.isfinite(losses)) and max(losses) < 100  # no -1e4 logit leaked into the loss


@pytest.mark.parametrize("method", ["anc", "box"])
def test_eval_logits_save_pred_writes_box_consistent_pseudo_labels(pipeline, tmp_path, capsys,
                                                                    method):  # fmt: skip
    """`eval --logits STORE --save-pred DIR`: one class-index PNG per store image, as the
    primary's W targets see it; no pixel carries a class outside every box of that class."""
    from boxseg.data.formats import open_dataset
    from boxseg.io import read_label_png
    from boxseg.store import LogitsStore
    from tests.conftest import run_cli

    store = pipeline["store"]
    if method == "box":
        store = tmp_path / "box.zarr"
        code, _, err = run_cli(["gen-logits", pipeline["data"], "--method", "box", "--out", store,
                                "--num-full", "4", "--quiet", "--stride", "8"], capsys)  # fmt: skip
        assert code == 0, err
    out = tmp_path / "pseudo"
    code, _, err = run_cli(["eval", pipeline["data"], "--split", "train", "--logits", store,
                            "--save-pred", out, "--quiet"], capsys)  # fmt: skip
    assert code == 0, err
    s = LogitsStore.open(store)
    ds = open_dataset(pipeline["data"])
    assert sorted(p.stem for p in out.glob("*.png")) == sorted(s.image_ids)
    for i, image_id in enumerate(s.image_ids):
        pred = read_label_png(out / f"{image_id}.png")
        boxes, labels = s.read_boxes(i)
        assert len(labels) > 0
        for c in range(1, ds.num_classes):  # (class 0 is the background: free)
            own = np.zeros(pred.shape, bool)
            for b in boxes[labels == c]:
                own |= _inside(b, *pred.shape)
            assert not ((pred == c) & ~own).any(), (image_id, c)


def test_a_graceful_rule_penalises_by_its_penalty():
    """--box-penalty: a class no box allows gets -penalty; a net surer than that by more still
    wins there."""
    k, h, w = 3, 20, 40
    boxes = np.array([[10, 5, 20, 15]], np.float32)  # 10 x 10 pixels, class 1
    ev = BoxEvidence.whole([boxes], [np.array([1])], h, w)
    soft = ConstraintRule.of(k, 0, None, penalty=4.0).bias(ev)[0]
    assert set(soft.unique().tolist()) == {0.0, -4.0}
    assert (soft[1] == -4.0).sum() == h * w - 100 and (soft[1, 5:15, 10:20] == 0).all()
    assert (soft[0] == 0).all() and (soft[2] == -4.0).all()  # background free; 2 has no box
    logits = torch.zeros(k, h, w)
    logits[1, 0, 0] = 4.5  # surer of class 1 than the penalty: still wins outside its box
    logits[1, 0, 1] = 3.5  # less sure: the background wins
    won = (logits + soft).argmax(0)
    assert won[0, 0] == 1 and won[0, 1] == 0


def test_records_of_the_hard_rule_read_and_compare_as_before():
    """Stores of 0.2 hold {"enabled", "prior"} and a rule without penalty or void: they
    read as the hard rule, and the hard rule writes exactly those records."""
    assert BoxConstraint().to_dict() == {"enabled": True, "prior": 0.0}
    old = {"num_classes": 3, "free": [0], "background": 0, "prior": 0.0}
    assert ConstraintRule.of(3, 0, None).to_dict() == old
    assert ConstraintRule.from_dict(old) == ConstraintRule.of(3, 0, None)
    soft = BoxConstraint(True, 0.0, 5.0, True)
    assert BoxConstraint.from_dict(soft.to_dict()) == soft
    rule = ConstraintRule.of(3, None, None, 0.0, 5.0, True)
    assert ConstraintRule.from_dict(rule.to_dict()) == rule
    for bad in (BoxConstraint(penalty=0), BoxConstraint(penalty=2e4)):
        with pytest.raises(BoxsegError, match="--box-penalty"):
            bad.validate()


def test_gen_logits_records_a_graceful_rule_and_readers_apply_it(pipeline, tmp_path, capsys):
    from boxseg.store import LogitsStore
    from tests.conftest import run_cli

    out = tmp_path / "soft.zarr"
    code, _, err = run_cli(["gen-logits", pipeline["data"], "--model", pipeline["anc"], "--out",
                            out, "--num-full", "4", "--device", "cpu", "--quiet",
                            "--box-penalty", "3"], capsys)  # fmt: skip
    assert code == 0, err
    store = LogitsStore.open(out)
    assert store.attrs["box_constraint"] == {"enabled": True, "prior": 0.0, "penalty": 3.0}
    assert store.rule.penalty == 3.0
    hard = LogitsStore.open(pipeline["store"])
    raw = store.read_full(0, constrained=False)
    np.testing.assert_allclose(raw, hard.read_full(0, constrained=False))  # the same net
    diff = store.read_full(0) - raw
    diff = diff[~diff.isnan()]
    assert diff.min() >= -3.0 - 1e-3 and diff.min() < -2.9  # the penalty, and only it
    args = ["eval", pipeline["data"], "--model", pipeline["anc"], "--split", "val"]
    code, _, err = run_cli([*args, "--device", "cpu", "--quiet", "--box-penalty", "0"], capsys)
    assert code == 2 and "--box-penalty 0: must be in" in err


def test_void_uncovered_gives_no_target_where_no_box_covers_a_pixel(pipeline, tmp_path, capsys):
    """--box-uncovered void (no background class, every class boxed): a pixel no box covers is
    void (NaN targets, which the W term leaves out) and nowhere else; refused where an
    uncovered pixel is no missing box; conv's F inputs are never void."""
    from boxseg.train_primary import f_rule
    from tests.conftest import run_cli

    boxes = np.array([[0, 0, 10, 10]], np.float32)
    ev = BoxEvidence.whole([boxes], [np.array([1])], 12, 16)
    rule = ConstraintRule.of(3, None, None, void_uncovered=True)
    bias = rule.bias(ev)[0]
    assert bias[:, :10, :10].isnan().sum() == 0 and bias[:, 10:, :].isnan().all()
    assert bias[:, :, 10:].isnan().all() and (rule.covered(ev)[0] == ~bias[0].isnan()).all()
    logits = rule.apply(torch.randn(1, 3, 12, 16), ev)  # what a store's reader gives
    from boxseg.weak_targets import without_void

    _, valid = without_void(logits, torch.ones(1, 12, 16, dtype=torch.bool))
    assert valid[0].sum() == 100 and valid[0, :10, :10].all()
    assert not ConstraintRule.of(3, 0, None, void_uncovered=True).bias(ev).isnan().any()
    assert f_rule(ConstraintRule.of(3, None, None, void_uncovered=True)).void_uncovered is False
    assert not ConstraintRule.of(3, None, (1,), void_uncovered=True).bias(ev).isnan().any()
    # refused where an uncovered pixel is no missing box: a background class (this set has
    # one), or classes that never get boxes
    code, _, err = run_cli(["gen-logits", pipeline["data"], "--model", pipeline["anc"], "--out",
                            tmp_path / "void.zarr", "--num-full", "4", "--device", "cpu",
                            "--quiet", "--box-uncovered", "void"], capsys)  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--box-uncovered void: only for data where every class gets boxes" in err
    meta = {"kind": "ancillary", "class_names": ["a", "b", "c"], "background": None,
            "boxes": {"classes": [1, 2]}}  # fmt: skip
    with pytest.raises(BoxsegError, match=r"here a may be anywhere"):
        rule_of(meta, BoxConstraint(void_uncovered=True))
    assert rule_of(meta | {"boxes": {}}, BoxConstraint(void_uncovered=True)).void_uncovered
    code, _, err = run_cli(["gen-logits", pipeline["data"], "--model", pipeline["anc"], "--out",
                            tmp_path / "x.zarr", "--num-full", "4", "--quiet",
                            "--box-uncovered", "maybe"], capsys)  # fmt: skip
    assert code == 2 and "--box-uncovered maybe: choose net or void" in err


# --- the prior in memory linear in pixels (issue 41): as the N x B x H x W painting was ---


def _prior_rules(classes: int) -> list[ConstraintRule]:
    """The rule with a prior, with and without a background class, and void where no box is."""
    return [
        ConstraintRule.of(classes, None, None, 2.5),
        ConstraintRule.of(classes, 0, None, 2.5),
        ConstraintRule.of(classes, None, None, 2.5, void_uncovered=True),
    ]


@pytest.mark.parametrize("crop", [None, 13, 16])
@pytest.mark.parametrize("count", [1, 7, 62, 63, 130])
def test_prior_matches_the_previous_implementation(crop, count):
    """Random boxes of a few sizes (many equal areas, where the later box wins), overlapping,
    at the edges, fractional or covering no pixel, batches of 3 with padding boxes, whole
    15 x 18 images and crops as training cuts them; 62 boxes to a bit set and beyond: the
    prior, and the whole bias, equal the previous implementation's bit for bit."""
    from tests.helpers import box_reference as before

    rng, decided_by_order = np.random.default_rng(count + (crop or 0)), 0
    for _ in range(4):
        ev = before.random_evidence(rng, 3, 15, 18, 5, count, crop)
        for rule in _prior_rules(5):
            want = before.smallest(rule, ev)
            assert torch.equal(rule._smallest(ev).long(), want)
            got, old = rule.bias(ev), before.bias(rule, ev)
            torch.testing.assert_close(got, old, rtol=0, atol=0, equal_nan=True)
        backwards = BoxEvidence(ev.bounds.flip(1), ev.labels.flip(1), ev.rows, ev.cols)
        decided_by_order += not torch.equal(before.smallest(rule, backwards).flip(1), want)
    assert count == 1 or decided_by_order  # equal areas of different classes did occur


def test_prior_memory_does_not_grow_with_boxes_times_pixels():
    """The largest tensor the bias with a prior makes (batch 2, 5 classes, 64 x 64): the
    previous painting's is N x B x H x W float32; with 150 boxes this one's stays below one
    byte a box and pixel (per-box rows and columns, pixel maps), and the prior's own part
    does not grow at all from 5 boxes to 150."""
    from tests.helpers import box_reference as before
    from tests.helpers.tensor_peak import largest_tensor

    def evidence_of(count: int) -> BoxEvidence:
        rng = np.random.default_rng(count)
        corner, side = rng.uniform(0, 63, (2, count, 2)), rng.uniform(1, 30, (2, count, 2))
        boxes = np.concatenate([corner, np.minimum(corner + side, 64)], -1).astype(np.float32)
        return BoxEvidence.whole(list(boxes), list(rng.integers(0, 5, (2, count))), 64, 64)

    rule, few, many = ConstraintRule.of(5, 0, None, 2.0), evidence_of(5), evidence_of(150)
    assert many.labels.shape == (2, 150)
    assert largest_tensor(lambda: rule.bias(many)) < 2 * 150 * 64 * 64
    prior_few = largest_tensor(lambda: rule._smallest(few))
    assert largest_tensor(lambda: rule._smallest(many)) == prior_few
    assert largest_tensor(lambda: before.bias(rule, many)) >= 2 * 150 * 64 * 64 * 4
