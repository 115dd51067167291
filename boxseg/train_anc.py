"""`boxseg train-anc`: train the ancillary net p_anc(y|x,b) on F, boxes derived from F's masks."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from boxseg import distributed
from boxseg.box_constraint import BoxEvidence, ConstraintRule
from boxseg.box_losses import BoxTerms, WeakBoxLoss
from boxseg.class_weights import resolve_class_weights
from boxseg.data.box_noise import BoxNoise
from boxseg.data.boxes import BoxSpec, box_channels
from boxseg.data.formats import SegDataset, open_dataset
from boxseg.data.sample import VOID
from boxseg.data.sampling import Batches, mixed, warn_if_short
from boxseg.data.split import SplitSpec, fraction_of, split_dataset
from boxseg.data.torchsets import AugmentSpec, FullTrainSet
from boxseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from boxseg.data.validate import usable_ids
from boxseg.engine import TrainConfig, fit, resolve_device, total_iters
from boxseg.errors import BoxsegError
from boxseg.losses import hard_cross_entropy
from boxseg.models import BoxPathSpec, ModelSpec, build_model, say_pretrained
from boxseg.run_dir import check_val_split, finish_run, model_meta, prepare_run_dir, write_config
from boxseg.weak_targets import OnlineWeakTrainSet


@dataclass(frozen=True)
class AncOptions:
    """Everything `boxseg train-anc` is asked: the data and run directory, F/W split, network
    (`pretrained`: its backbone's starting weights; `box_path`: how the boxes enter it, by
    default max-pooled and the direct path), training budget, how boxes are derived from
    masks (`boxes`) and made imprecise at every draw (`box_noise`: box_noise.py, for W boxes
    that are loose, shifted or missing), the share of F trained on (`full_fraction`: the conv
    recipe's stage 1), the loss's per-class weights (none, median-freq or a file;
    class_weights.py), whether the loss sees the box-consistent logits as gen-logits will
    decode them (`constraint_loss`), W's box terms (`weak_boxes`, with `weak_batch_size` W
    images a step; None: the F batch size), the split scored at the end (None: none) and
    whether bad images are left out (`skip_bad`). `dataclasses.replace` makes variants."""

    data: Path
    out: Path
    split: SplitSpec
    model: ModelSpec
    train: TrainConfig
    boxes: BoxSpec = field(default_factory=BoxSpec)
    pretrained: str = "none"
    box_path: BoxPathSpec = field(default_factory=BoxPathSpec)
    box_noise: BoxNoise = field(default_factory=BoxNoise)
    full_fraction: float = 1.0
    class_weights: str = "median-freq"
    constraint_loss: bool = False
    weak_boxes: WeakBoxLoss = field(default_factory=WeakBoxLoss)
    weak_batch_size: int | None = None
    val_split: str | None = "val"
    skip_bad: bool = False

    def validate(self) -> None:
        """One-line errors for option values that cannot work."""
        if self.box_path.resize not in ("max", "nearest"):
            raise BoxsegError(f"--box-resize {self.box_path.resize}: choose max or nearest")
        self.train.validate()
        self.weak_boxes.validate()
        if self.weak_batch_size is not None and self.weak_batch_size < 2:
            raise BoxsegError(f"--weak-batch-size {self.weak_batch_size}: must be at least 2")


def run_config(opts: AncOptions, found: dict) -> dict:
    """config.json's options: each part of `opts`, and beside them what the run found
    (`found`: the dataset's description, the F and W counts, the W images and batch size of
    the box terms, the class weights' values, whether pretrained weights loaded, the steps),
    in the keys and order runs have always written."""
    return {
        "data": found["data"],
        "split": opts.split.to_dict(),
        "num_full": found["num_full"],
        "num_weak": found["num_weak"],
        "boxes": opts.boxes.to_dict(),
        "model": opts.model.to_dict(),
        "box_path": opts.box_path.to_dict(),
        "constraint_loss": opts.constraint_loss,
        "box_noise": opts.box_noise.to_dict(),
        "weak_boxes": opts.weak_boxes.to_dict() | found["weak_boxes"],
        "class_weights": {"option": opts.class_weights, "values": found["class_weights"]},
        "pretrained": opts.pretrained,
        "pretrained_loaded": found["pretrained_loaded"],
        "train": opts.train.to_dict(),
        "iters": found["iters"],
    }


def weak_box_batches(
    opts: AncOptions, ds: SegDataset, weak_ids: list[str], out: Path, aug: AugmentSpec, quiet: bool
) -> tuple[Batches | None, list[str]]:
    """With `--weak-boxes`: the W batches of the box terms (images and boxes, never masks) and
    W's usable ids; without: (None, [])."""
    if not opts.weak_boxes.enabled:
        return None, []
    if not weak_ids:
        raise BoxsegError("--weak-boxes: the split leaves no weak images (W is empty)")
    split, cfg = opts.split.split, opts.train
    skipped = out / "skipped_weak.json"
    w_ids = usable_ids(ds, split, weak_ids, ds.boxes_from_masks, opts.skip_bad, skipped, "W", quiet)
    w_set = OnlineWeakTrainSet(ds, split, w_ids, opts.boxes, aug, IMAGENET_MEAN, IMAGENET_STD)
    w_batches = Batches(w_set, opts.weak_batch_size or cfg.batch_size, cfg.workers, cfg.seed + 1)
    warn_if_short(w_batches, "W", "--weak-batch-size" if opts.weak_batch_size else "--batch-size")
    return w_batches, w_ids


def train_anc(opts: AncOptions, quiet: bool = False) -> dict:
    """Train the ancillary net on F (or a `full_fraction` of it), the boxes derived from F's
    masks; with `weak_boxes` each step also draws W images with their boxes (never their
    masks) and adds the box-supervised terms of box_losses.py on the net's box-consistent
    logits, so W's boxes teach shapes too, not only F's masks. With `constraint_loss` the loss
    sees the box-consistent logits (box_constraint.py); pixels whose class no box allows are
    left out. `box_noise` is recorded in model.pt.

    Writes RUN/model.pt, config.json, metrics.jsonl; returns the val scores (or {}).
    """
    opts.validate()
    split, cfg = opts.split, opts.train
    device = distributed.join_group(resolve_device(cfg.device))
    ds = open_dataset(opts.data)
    check_val_split(ds, opts.val_split)
    full_ids, weak_ids = split_dataset(ds, split)
    num_full = len(full_ids)
    if opts.full_fraction < 1:
        full_ids = fraction_of(full_ids, opts.full_fraction, split.seed)
    out = opts.out
    if distributed.is_main():
        out = prepare_run_dir(out, "train-anc", opts.data, cfg.resume, cfg.overwrite)
    out = Path(out)
    muted = quiet or not distributed.is_main()  # (one rank speaks)
    skipped = out / "skipped_full.json"
    full_ids = usable_ids(ds, split.split, full_ids, True, opts.skip_bad, skipped, "F", muted)
    weights = resolve_class_weights(opts.class_weights, ds, split.split, full_ids)
    torch.manual_seed(cfg.seed)
    channels = box_channels(ds.num_classes, ds.background)
    model = build_model(opts.model, ds.num_classes, channels, opts.pretrained, opts.box_path)
    model = model.to(device)
    say_pretrained(model, quiet)
    aug = AugmentSpec(cfg.crop, (cfg.scale_min, cfg.scale_max))
    rule = ConstraintRule.of(ds.num_classes, ds.background, opts.boxes.classes)
    train_set = FullTrainSet(
        ds,
        split.split,
        full_ids,
        opts.boxes,
        aug,
        True,
        IMAGENET_MEAN,
        IMAGENET_STD,
        evidence=opts.constraint_loss,
        box_noise=opts.box_noise,
    )
    f_batches = Batches(train_set, cfg.batch_size, cfg.workers, cfg.seed)
    warn_if_short(f_batches, "F", "--batch-size")
    iters = total_iters(cfg, f_batches)
    w_batches, w_ids = weak_box_batches(opts, ds, weak_ids, out, aug, muted)
    terms = BoxTerms(opts.weak_boxes, iters, ds.background, rule)
    if distributed.is_main():
        found = {
            "data": ds.describe(),
            "num_full": len(full_ids),
            "num_weak": len(weak_ids),
            "weak_boxes": {
                "num_images": len(w_ids),
                "batch_size": w_batches.batch_size if w_batches else None,
            },
            "class_weights": None if weights is None else weights.tolist(),
            "pretrained_loaded": model.pretrained,
            "iters": iters,
        }
        write_config(out, "train-anc", run_config(opts, found), device)

    on_device = None if weights is None else weights.to(device)  # moved once, not every step

    def step(nets: nn.ModuleDict, batch: dict, i: int):
        f, w = batch["f"], batch["w"]
        nf = f["image"].shape[0]
        images, boxes = f["image"], f["boxes"]
        if w is not None:  # one forward for F and W: batch norm sees both
            images, boxes = torch.cat([images, w["image"]]), torch.cat([boxes, w["boxes"]])
        logits = nets["ancillary"](images, boxes)
        out, mask = logits[:nf], f["mask"]
        if "box_bounds" in f:  # learn to choose among the classes the boxes allow
            bias = rule.bias(BoxEvidence.of_batch(f).to(out.device))
            out = out.float() + bias
            ruled_out = bias.gather(1, mask.clamp_max(ds.num_classes - 1)[:, None])
            mask = torch.where(ruled_out[:, 0] < 0, torch.full_like(mask, VOID), mask)
        loss, all_void = hard_cross_entropy(out, mask, on_device)
        logs = {"skipped_f": all_void}
        if w is not None:  # W's boxes: shapes inside them, on what gen-logits will decode
            out_w = logits[nf:].float() + rule.bias(BoxEvidence.of_batch(w).to(out.device))
            loss_w, logs_w = terms(out_w, w, i)
            loss, logs = loss + loss_w, logs | {"loss_f": loss.detach()} | logs_w
        return loss, logs, images.shape[0]

    nets = nn.ModuleDict({"ancillary": model})
    batches = mixed(f_batches, w_batches)
    timing = fit(nets, step, batches, cfg, iters, device, out, "train-anc", quiet)
    if not distributed.is_main():
        return {}
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    meta = model_meta("ancillary", opts.model, ds, opts.boxes, channels, mean, std)
    # what conv's merger needs to know: did this net see all of F (then it has little to learn)
    meta["trained_on"] = {
        "split": split.to_dict(),
        "full_fraction": opts.full_fraction,
        "num_images": len(full_ids),
        "num_full": num_full,
        "ids": sorted(full_ids),
    }
    meta["box_noise"] = opts.box_noise.to_dict()  # the box imprecision it was taught to read
    label = "train-anc (boxes given)"
    return finish_run(out, model, meta, ds, opts.val_split, device, timing, iters, label, quiet)
