"""`boxseg train-anc`: train the ancillary net p_anc(y|x,b) on F, boxes derived from F's masks."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from boxseg import distributed
from boxseg.box_constraint import BoxEvidence, ConstraintRule
from boxseg.box_losses import BoxTerms, WeakBoxLoss
from boxseg.class_weights import resolve_class_weights
from boxseg.data.box_noise import BoxNoise
from boxseg.data.boxes import BoxSpec, box_channels
from boxseg.data.formats import open_dataset
from boxseg.data.sample import VOID
from boxseg.data.sampling import Batches, mixed, warn_if_short
from boxseg.data.split import SplitSpec, fraction_of, split_dataset
from boxseg.data.torchsets import AugmentSpec, FullTrainSet
from boxseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from boxseg.data.validate import usable_ids
from boxseg.engine import TrainConfig, fit, resolve_device, total_iters
from boxseg.errors import BoxsegError
from boxseg.models import BoxPathSpec, ModelSpec, build_model, say_pretrained
from boxseg.run_dir import check_val_split, finish_run, model_meta, prepare_run_dir, write_config
from boxseg.selfcorr import hard_cross_entropy
from boxseg.weak_targets import OnlineWeakTrainSet


def train_anc(
    data: Path,
    out: Path,
    split: SplitSpec,
    box_spec: BoxSpec,
    spec: ModelSpec,
    cfg: TrainConfig,
    pretrained: str = "none",
    val_split: str | None = "val",
    quiet: bool = False,
    full_fraction: float = 1.0,
    skip_bad: bool = False,
    class_weights: str = "median-freq",
    box_path: BoxPathSpec | None = None,
    constraint_loss: bool = False,
    weak_boxes: WeakBoxLoss | None = None,
    weak_batch_size: int | None = None,
    box_noise: BoxNoise | None = None,
) -> dict:
    """Train on F (or a `full_fraction` of it: the conv recipe's stage 1), with the boxes
    entering through `box_path` (default: max-pooled boxes and the direct path) and the loss
    weighted per class by `class_weights` (none, median-freq or a file; class_weights.py).
    `constraint_loss`: the loss sees the box-consistent logits (box_constraint.py), as
    gen-logits will decode them; pixels whose class no box allows are left out.
    `weak_boxes` (enabled): each step also draws `weak_batch_size` W images with their boxes
    (never their masks) and adds the box-supervised terms of box_losses.py on the net's
    box-consistent logits, so W's boxes teach shapes too, not only F's masks.
    `box_noise`: F's boxes made imprecise at every draw (box_noise.py), for W boxes that are
    loose, shifted or missing; recorded in model.pt.

    Writes RUN/model.pt, config.json, metrics.jsonl; returns the val scores (or {}).
    """
    cfg.validate()
    weak_boxes = weak_boxes or WeakBoxLoss()
    weak_boxes.validate()
    if weak_batch_size is not None and weak_batch_size < 2:
        raise BoxsegError(f"--weak-batch-size {weak_batch_size}: must be at least 2")
    device = resolve_device(cfg.device)
    ds = open_dataset(data)
    check_val_split(ds, val_split)
    full_ids, weak_ids = split_dataset(ds, split)
    num_full = len(full_ids)
    full_ids = fraction_of(full_ids, full_fraction, split.seed) if full_fraction < 1 else full_ids
    if distributed.is_main():
        out = prepare_run_dir(out, "train-anc", data, cfg.resume, cfg.overwrite)
    out = Path(out)
    full_ids = usable_ids(ds, split.split, full_ids, True, skip_bad, out / "skipped_full.json", "F",
                          quiet or not distributed.is_main())  # fmt: skip
    weights = resolve_class_weights(class_weights, ds, split.split, full_ids)
    box_path = box_path or BoxPathSpec()
    torch.manual_seed(cfg.seed)
    channels = box_channels(ds.num_classes, ds.background)
    model = build_model(spec, ds.num_classes, channels, pretrained, box_path).to(device)
    say_pretrained(model, quiet)
    aug = AugmentSpec(cfg.crop, (cfg.scale_min, cfg.scale_max))
    rule = ConstraintRule.of(ds.num_classes, ds.background, box_spec.classes)
    box_noise = box_noise or BoxNoise()
    train_set = FullTrainSet(ds, split.split, full_ids, box_spec, aug, True, IMAGENET_MEAN,
                             IMAGENET_STD, evidence=constraint_loss,
                             box_noise=box_noise)  # fmt: skip
    f_batches = Batches(train_set, cfg.batch_size, cfg.workers, cfg.seed)
    warn_if_short(f_batches, "F", "--batch-size")
    iters = total_iters(cfg, f_batches)
    w_batches, w_ids = None, []
    if weak_boxes.enabled:
        if not weak_ids:
            raise BoxsegError("--weak-boxes: the split leaves no weak images (W is empty)")
        w_ids = usable_ids(ds, split.split, weak_ids, ds.boxes_from_masks, skip_bad,
                           out / "skipped_weak.json", "W",
                           quiet or not distributed.is_main())  # fmt: skip
        w_set = OnlineWeakTrainSet(ds, split.split, w_ids, box_spec, aug, IMAGENET_MEAN,
                                   IMAGENET_STD)  # fmt: skip
        w_batches = Batches(w_set, weak_batch_size or cfg.batch_size, cfg.workers, cfg.seed + 1)
        warn_if_short(w_batches, "W", "--weak-batch-size" if weak_batch_size else "--batch-size")
    terms = BoxTerms(weak_boxes, iters, ds.background, rule)
    if distributed.is_main():
        write_config(
            out,
            "train-anc",
            {
                "data": ds.describe(),
                "split": split.to_dict(),
                "num_full": len(full_ids),
                "num_weak": len(weak_ids),
                "boxes": box_spec.to_dict(),
                "model": spec.to_dict(),
                "box_path": box_path.to_dict(),
                "constraint_loss": constraint_loss,
                "box_noise": box_noise.to_dict(),
                "weak_boxes": weak_boxes.to_dict() | {
                    "num_images": len(w_ids),
                    "batch_size": w_batches.batch_size if w_batches else None},
                "class_weights": {
                    "option": class_weights,
                    "values": None if weights is None else weights.tolist(),
                },
                "pretrained": pretrained,
                "pretrained_loaded": model.backbone.pretrained,
                "train": cfg.to_dict(),
                "iters": iters,
            },
            device,
        )

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
        loss, all_void = hard_cross_entropy(out, mask, weights)
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
    meta = model_meta("ancillary", spec, ds, box_spec, channels, IMAGENET_MEAN, IMAGENET_STD)
    # what conv's merger needs to know: did this net see all of F (then it has little to learn)
    meta["trained_on"] = {"split": split.to_dict(), "full_fraction": full_fraction,
                          "num_images": len(full_ids), "num_full": num_full,
                          "ids": sorted(full_ids)}  # fmt: skip
    meta["box_noise"] = box_noise.to_dict()  # the box imprecision it was taught to read
    return finish_run(out, model, meta, ds, val_split, device, timing, iters,
                      "train-anc (boxes given)", quiet)  # fmt: skip
