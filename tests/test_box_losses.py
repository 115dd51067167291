"""Box-supervised terms on W (box_losses.py): what each term rewards, and that W's masks stay
unread."""

import json

import cv2
import numpy as np
import pytest
import torch

from boxseg.box_constraint import BoxEvidence, ConstraintRule
from boxseg.box_losses import (
    BoxTerms,
    WeakBoxLoss,
    image_lab,
    pairwise_loss,
    projection_loss,
    rgb_to_lab,
    run_max,
)
from boxseg.data.boxes import BoxSpec
from boxseg.data.folder import FolderDataset
from boxseg.data.formats import open_dataset
from boxseg.data.sampling import collate
from boxseg.data.split import SplitSpec
from boxseg.data.torchsets import AugmentSpec
from boxseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD, to_tensor
from boxseg.engine import TrainConfig
from boxseg.errors import BoxsegError
from boxseg.models import ModelSpec, build_model
from boxseg.train_anc import AncOptions, train_anc
from boxseg.weak_targets import OnlineWeakTrainSet
from tests.conftest import TINY_MODEL, TINY_TRAIN, run_cli
from tests.data.test_folder import write_folder
from tests.helpers import box_reference as before
from tests.helpers.tensor_peak import largest_tensor


def evidence(boxes, labels, h=16, w=16, rows=None, cols=None) -> BoxEvidence:
    rows = torch.arange(h) if rows is None else torch.as_tensor(rows)
    cols = torch.arange(w) if cols is None else torch.as_tensor(cols)
    return BoxEvidence(torch.tensor([boxes]), torch.tensor([labels]), rows[None], cols[None])


def probs_of(label_map: np.ndarray, k: int = 2, sharp: float = 30.0) -> torch.Tensor:
    """1 x k x H x W probabilities, (near) one-hot on `label_map`."""
    onehot = torch.nn.functional.one_hot(torch.as_tensor(label_map).long(), k).permute(2, 0, 1)
    return torch.softmax(onehot[None].float() * sharp, 1)


def test_lab_matches_opencv():
    rgb = np.random.default_rng(0).random((7, 9, 3), dtype=np.float32)
    rgb[0, 0], rgb[0, 1] = 0.0, 1.0  # black and white
    ours = rgb_to_lab(torch.from_numpy(rgb).permute(2, 0, 1)[None])[0].permute(1, 2, 0).numpy()
    # OpenCV interpolates the gamma curve: a few tenths off at most (BoxInst's threshold is 2.4)
    np.testing.assert_allclose(ours, cv2.cvtColor(rgb, cv2.COLOR_RGB2Lab), atol=0.3)
    u8 = (rgb * 255).round().astype(np.uint8)
    back = image_lab(to_tensor(u8, IMAGENET_MEAN, IMAGENET_STD)[None])[0].permute(1, 2, 0)
    expected = cv2.cvtColor(u8.astype(np.float32) / 255, cv2.COLOR_RGB2Lab)
    np.testing.assert_allclose(back.numpy(), expected, atol=0.3)


BOX = [4, 3, 12, 10]  # x1, y1, x2, y2 (exclusive): rows 3-9, columns 4-11


def cross_in_box() -> np.ndarray:
    """Class 1 on a cross touching all four sides of BOX, far from filling it."""
    m = np.zeros((16, 16), np.int64)
    m[6, 4:12] = 1  # one full-width row
    m[3:10, 8] = 1  # one full-height column
    return m


def test_projection_is_zero_for_a_shape_touching_every_row_and_column():
    assert projection_loss(probs_of(cross_in_box()), evidence([BOX], [1])) < 1e-4
    filled = np.zeros((16, 16), np.int64)
    filled[3:10, 4:12] = 1
    assert projection_loss(probs_of(filled), evidence([BOX], [1])) < 1e-4


def test_projection_is_positive_when_a_row_or_a_column_is_empty():
    ev = evidence([BOX], [1])
    top_empty = cross_in_box()
    top_empty[3, 8] = 0  # row 3 holds no class-1 pixel now
    left_empty = cross_in_box()
    left_empty[6, 4] = 0  # column 4 neither
    for m in (top_empty, left_empty):
        assert projection_loss(probs_of(m), ev) > 0.02
    small = np.zeros((16, 16), np.int64)
    small[5:8, 6:10] = 1  # a blob in the box's middle, far from its sides: further off
    assert projection_loss(probs_of(small), ev) > 0.2


def test_projection_ignores_an_axis_the_crop_cuts():
    ev_cut = evidence([BOX], [1], rows=np.r_[-1, -1, -1, -1, -1, -1, 6:16])  # rows 3-5 lost
    m = cross_in_box()
    m[6, 4:12] = 0  # no full row: only the column survives; the cut rows would need it
    m[6, 8] = 1
    # columns 4-11: only column 8 holds class 1 in the rows shown, but the box's top rows are
    # cut off, so the per-column projection says nothing; the per-row one still holds
    assert projection_loss(probs_of(m), ev_cut) < 1e-4
    assert projection_loss(probs_of(m), evidence([BOX], [1])) > 0.2


PROBS = {  # kinds of maps: probabilities (generic, many exact ties, exact 0 and 1), signed
    "generic": lambda shape, g: torch.randn(shape, generator=g).softmax(1),
    "signed": lambda shape, g: torch.randn(shape, generator=g) - 2,  # vs the zeros outside
    "ties": lambda shape, g: torch.randint(0, 2, shape, generator=g).float().softmax(1),
    "hard": lambda shape, g: (torch.randint(0, 2, shape, generator=g) * 200.0).softmax(1),
}


def _leaf_pair(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return probs.clone().requires_grad_(), probs.clone().requires_grad_()


def _tied(probs: torch.Tensor, ev: BoxEvidence) -> int:
    """How many (box, column) pairs have their max held by several of the box's rows."""
    col_max, _ = before.box_maxima(probs, ev)
    p = probs.gather(1, ev.labels.clamp_min(0)[..., None, None].expand(-1, -1, *probs.shape[2:]))
    held = (p == col_max[:, :, None, :]) & ev.extents()[0][..., None]
    return int((held.sum(2) > 1).sum())


@pytest.mark.parametrize("kind", PROBS)
@pytest.mark.parametrize("crop", [None, 13, 16])
def test_projection_matches_the_previous_implementation(kind, crop):
    """Random boxes (overlapping, at the edges, fractional, covering no pixel), batches of 3
    with padding boxes, on whole 15 x 18 images and on crops as training cuts them (scaled,
    shifted, padded, flipped): each box's row and column maxima, and the loss, equal the
    previous N x B x H x W implementation's bit for bit, their gradients (amax's, shared by
    tied positions) within 1e-5."""
    rng, g = np.random.default_rng(len(kind) + (crop or 0)), torch.Generator().manual_seed(0)
    tied = 0
    for _ in range(5):
        ev = before.random_evidence(rng, 3, 15, 18, 4, 12, crop)
        probs = PROBS[kind]((3, 4, ev.rows.shape[1], ev.cols.shape[1]), g)
        tied += _tied(probs, ev)
        new, old = _leaf_pair(probs)
        in_rows, in_cols = ev.extents()
        labels = ev.labels.clamp_min(0)
        maxima = run_max(new, labels, in_rows), run_max(new.transpose(2, 3), labels, in_cols)
        old_maxima = before.box_maxima(old, ev)
        upstream = [torch.randn(m.shape, generator=g) for m in old_maxima]
        for got, want, up in zip(maxima, old_maxima, upstream, strict=True):
            assert torch.equal(got, want)
            (got * up).sum().backward(retain_graph=True)
            (want * up).sum().backward(retain_graph=True)
        torch.testing.assert_close(new.grad, old.grad, rtol=0, atol=1e-5)
        new, old = _leaf_pair(probs)
        loss, old_loss = projection_loss(new, ev), before.projection_loss(old, ev)
        assert torch.equal(loss, old_loss)
        loss.backward()
        old_loss.backward()
        torch.testing.assert_close(new.grad, old.grad, rtol=0, atol=1e-5)
    assert kind in ("generic", "signed") or tied > 0  # the ties these kinds are for occurred


def test_a_crop_shows_each_box_as_one_run_of_rows_and_columns():
    """What `run_max` relies on: on the crops training cuts (scaled, shifted, padded, flipped)
    the output rows (columns) inside a box are consecutive."""
    rng = np.random.default_rng(0)
    for crop in (7, 13, 16, 40):
        for _ in range(10):
            ev = before.random_evidence(rng, 3, 15, 18, 4, 12, crop)
            for inside in ev.extents():
                first, count = inside.byte().argmax(-1), inside.sum(-1)
                at = torch.arange(inside.shape[-1])
                run = (at >= first[..., None]) & (at < (first + count)[..., None])
                assert torch.equal(run, inside)


def _spread_evidence(count: int, size: int = 64, n: int = 2, classes: int = 5) -> BoxEvidence:
    """n whole size x size images with `count` boxes each (1-30 pixels a side)."""
    rng = np.random.default_rng(count)
    corner, side = rng.uniform(0, size - 1, (n, count, 2)), rng.uniform(1, 30, (n, count, 2))
    boxes = np.concatenate([corner, np.minimum(corner + side, size)], -1).astype(np.float32)
    labels = rng.integers(0, classes, (n, count))
    return BoxEvidence.whole(list(boxes), list(labels), size, size)


def test_projection_memory_does_not_grow_with_boxes_times_pixels():
    """The largest tensor of a forward and backward pass (batch 2, 5 classes, 64 x 64): the
    previous implementation's is N x B x H x W, this one's the probabilities' own size, with
    5 boxes as with 150."""

    def largest(loss_fn, count: int) -> int:
        ev = _spread_evidence(count)
        probs = torch.randn(2, 5, 64, 64).softmax(1).requires_grad_()
        return largest_tensor(lambda: loss_fn(probs, ev).backward())

    assert _spread_evidence(150).labels.shape == (2, 150)
    pixels = 2 * 5 * 64 * 64 * 4  # the probabilities, float32
    assert largest(projection_loss, 5) == largest(projection_loss, 150) == pixels
    assert largest(before.projection_loss, 150) >= 2 * 150 * 64 * 64 * 4  # the probe sees it


def two_colours(h=12, w=16, edge=8) -> torch.Tensor:
    """LAB of an image red left of column `edge`, blue from it on."""
    rgb = torch.zeros(1, 3, h, w)
    rgb[:, 0, :, :edge] = 0.8
    rgb[:, 2, :, edge:] = 0.8
    return rgb_to_lab(rgb)


def test_pairwise_is_zero_for_a_constant_label():
    lab, region = two_colours(), torch.ones(1, 12, 16, dtype=torch.bool)
    labels = np.ones((12, 16), np.int64)
    assert pairwise_loss(probs_of(labels).log(), lab, region) < 1e-6


def test_pairwise_rises_only_when_labels_differ_inside_one_colour():
    lab, region = two_colours(), torch.ones(1, 12, 16, dtype=torch.bool)
    at_edge = np.zeros((12, 16), np.int64)
    at_edge[:, 8:] = 1  # the labels change where the colour does
    inside = np.zeros((12, 16), np.int64)
    inside[:, 4:] = 1  # they change inside the red half
    loss_edge = pairwise_loss(probs_of(at_edge).log(), lab, region)
    loss_inside = pairwise_loss(probs_of(inside).log(), lab, region)
    assert loss_edge < 1e-6 < 1.0 < loss_inside
    # outside the region nothing counts
    left = torch.zeros(1, 12, 16, dtype=torch.bool)
    left[..., 10:] = True
    assert pairwise_loss(probs_of(inside).log(), lab, left) < 1e-6


def test_pairwise_skips_pairs_that_abutting_boxes_of_two_classes_have_settled():
    # one colour everywhere; a class-0 box on the left half, a class-1 box on the right (as
    # CamVid's boxes tile a street scene): the box-consistent labels must change at col 8
    rule = ConstraintRule.of(2, None, None)
    ev = evidence([[0, 0, 8, 12], [8, 0, 16, 12]], [0, 1], h=12, w=16)
    lab, region = rgb_to_lab(torch.full((1, 3, 12, 16), 0.5)), torch.ones(1, 12, 16, dtype=bool)
    follows_boxes = np.zeros((12, 16), np.int64)
    follows_boxes[:, 8:] = 1
    log_probs = torch.log_softmax(rule.apply(probs_of(follows_boxes).log(), ev), 1)
    assert pairwise_loss(log_probs, lab, region) > 100  # the constraint's penalty, not a shape
    assert pairwise_loss(log_probs, lab, region, allowed=rule.allowed(ev)) < 1e-6
    # inside one box the term still asks similar colours to share a label
    splits_a_box = follows_boxes.copy()
    splits_a_box[:, 4:] = 1
    inside = torch.log_softmax(probs_of(splits_a_box).log(), 1)
    assert pairwise_loss(inside, lab, region, allowed=rule.allowed(ev)) > 1.0
    # with a background class every pair may share it: nothing is left out (the objects set)
    with_bg = ConstraintRule.of(3, 0, None)
    ev_bg = evidence([[0, 0, 8, 12], [8, 0, 16, 12]], [1, 2], h=12, w=16)
    log_bg = torch.log_softmax(with_bg.apply(probs_of(follows_boxes + 1, k=3).log(), ev_bg), 1)
    assert pairwise_loss(log_bg, lab, region, allowed=with_bg.allowed(ev_bg)) == pairwise_loss(
        log_bg, lab, region)


def test_terms_ramp_up_and_options_are_checked():
    terms = BoxTerms(WeakBoxLoss(True, weight=2.0, warmup=0.5), iters=100, background=0)
    assert terms.weight(0) == pytest.approx(0.04) and terms.weight(49) == terms.weight(99) == 2
    for bad in (WeakBoxLoss(True, weight=-1), WeakBoxLoss(True, warmup=2),
                WeakBoxLoss(True, threshold=0)):  # fmt: skip
        with pytest.raises(BoxsegError):
            bad.validate()


@pytest.fixture
def boxes_only_w(tmp_path, monkeypatch):
    """A folder dataset whose W images have masks on disk too; reading one fails the test."""
    root = write_folder(tmp_path / "f", n=8, with_png=range(8), with_polygons=())
    (root / "F.txt").write_text("img0\nimg1\nimg2\n")
    weak = {"img3", "img4", "img5"}
    read_mask = FolderDataset.read_mask

    def guarded(self, split, image_id):
        assert image_id not in weak, f"W's mask of {image_id} was read"
        return read_mask(self, split, image_id)

    monkeypatch.setattr(FolderDataset, "read_mask", guarded)
    return root, sorted(weak)


def test_a_w_batch_gives_gradient_without_reading_a_w_mask(boxes_only_w):
    root, weak = boxes_only_w
    ds = open_dataset(root)
    with pytest.raises(AssertionError, match="was read"):  # the guard works
        ds.read_mask("train", weak[0])
    aug = AugmentSpec(32, (0.75, 1.25))
    w_set = OnlineWeakTrainSet(ds, "train", weak, BoxSpec(), aug, IMAGENET_MEAN, IMAGENET_STD)
    batch = collate([w_set[(i, 7 + i)] for i in range(3)])
    torch.manual_seed(0)
    channels = batch["boxes"].shape[1]
    net = build_model(ModelSpec("resnet18", 16, 16, 16), 3, channels, "none")
    logits = net(batch["image"], batch["boxes"])
    loss, logs = BoxTerms(WeakBoxLoss(True), 10, ds.background)(logits, batch, 5)
    loss.backward()
    assert logs["loss_proj"] > 0 and torch.isfinite(logs["loss_pair"])
    grads = [p.grad.abs().sum() for p in net.parameters() if p.grad is not None]
    assert grads and sum(grads) > 0


def test_train_anc_with_weak_boxes_never_reads_w_masks(boxes_only_w, tmp_path):
    root, _ = boxes_only_w
    cfg = TrainConfig(iters=2, batch_size=2, crop=32, device="cpu")
    split = SplitSpec("train", None, 0, str(root / "F.txt"))
    spec, weak = ModelSpec("resnet18", 16, 16, 16), WeakBoxLoss(True)
    opts = AncOptions(root, tmp_path / "anc", split, spec, cfg, weak_boxes=weak, val_split=None)
    train_anc(opts, quiet=True)
    steps = [json.loads(x) for x in (tmp_path / "anc" / "metrics.jsonl").read_text().split("\n")
             if '"loss_proj"' in x]  # fmt: skip
    assert steps and all(s["loss_proj"] > 0 for s in steps)
    config = json.loads((tmp_path / "anc" / "config.json").read_text())
    assert config["weak_boxes"]["enabled"] and config["weak_boxes"]["num_images"] == 3


def test_cli_weak_box_options(tiny_data, tmp_path, capsys):
    code, _, err = run_cli(["train-anc", tiny_data, "--out", tmp_path / "a", "--num-full",
                            "4", *TINY_MODEL, *TINY_TRAIN, "--weak-box-weight", "2"],
                           capsys)  # fmt: skip
    assert code == 2 and "--weak-box-weight: not used without --weak-boxes" in err
    code, _, err = run_cli(["train-anc", tiny_data, "--out", tmp_path / "b", "--num-full", "12",
                            *TINY_MODEL, *TINY_TRAIN, "--weak-boxes"], capsys)  # fmt: skip
    assert code == 2 and "W is empty" in err


def test_train_primary_weak_boxes_on_a_store(pipeline, tmp_path, capsys):
    args = ["train-primary", pipeline["data"], "--num-full", "4", *TINY_MODEL, *TINY_TRAIN]
    code, _, err = run_cli([*args, "--out", tmp_path / "p", "--logits", pipeline["store"],
                            "--self-corr", "linear", "--weak-boxes"], capsys)  # fmt: skip
    assert code == 0, err
    logged = [json.loads(x) for x in (tmp_path / "p" / "metrics.jsonl").read_text().split("\n")
              if '"loss_proj"' in x]  # fmt: skip
    assert logged and logged[-1]["loss_proj"] > 0 and "loss_w" in logged[-1]
    bare = tmp_path / "bare.zarr"
    code, _, err = run_cli(["gen-logits", pipeline["data"], "--model", pipeline["anc"],
                            "--out", bare, "--num-full", "4", "--device", "cpu",
                            "--no-box-constraint", "--quiet"], capsys)  # fmt: skip
    assert code == 0, err
    code, _, err = run_cli([*args, "--out", tmp_path / "q", "--logits", bare, "--weak-boxes"],
                           capsys)  # fmt: skip
    assert code == 2 and "--weak-boxes: the store holds no boxes" in err
