"""`boxseg train-anc`: train the ancillary net p_anc(y|x,b) on F, boxes derived from F's masks."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from boxseg import distributed
from boxseg.box_constraint import BoxEvidence, ConstraintRule
from boxseg.class_weights import resolve_class_weights
from boxseg.data.boxes import BoxSpec, box_channels
from boxseg.data.formats import open_dataset
from boxseg.data.sample import VOID
from boxseg.data.sampling import Batches
from boxseg.data.split import SplitSpec, fraction_of, split_dataset
from boxseg.data.torchsets import AugmentSpec, FullTrainSet
from boxseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from boxseg.data.validate import usable_ids
from boxseg.engine import TrainConfig, fit, resolve_device, total_iters
from boxseg.models import BoxPathSpec, ModelSpec, build_model, say_pretrained
from boxseg.run_dir import check_val_split, finish_run, model_meta, prepare_run_dir, write_config
from boxseg.selfcorr import hard_cross_entropy


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
) -> dict:
    """Train on F (or a `full_fraction` of it: the conv recipe's stage 1), with the boxes
    entering through `box_path` (default: max-pooled boxes and the direct path) and the loss
    weighted per class by `class_weights` (none, median-freq or a file; class_weights.py).
    `constraint_loss`: the loss sees the box-consistent logits (box_constraint.py), as
    gen-logits will decode them; pixels whose class no box allows are left out.

    Writes RUN/model.pt, config.json, metrics.jsonl; returns the val scores (or {}).
    """
    cfg.validate()
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
    train_set = FullTrainSet(ds, split.split, full_ids, box_spec, aug, True, IMAGENET_MEAN,
                             IMAGENET_STD, evidence=constraint_loss)  # fmt: skip
    batches = Batches(train_set, cfg.batch_size, cfg.workers, cfg.seed)
    iters = total_iters(cfg, batches)
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

    def step(nets: nn.ModuleDict, batch: dict, _: int):
        logits = nets["ancillary"](batch["image"], batch["boxes"])
        mask = batch["mask"]
        if "box_bounds" in batch:  # learn to choose among the classes the boxes allow
            bias = rule.bias(BoxEvidence.of_batch(batch).to(logits.device))
            logits = logits.float() + bias
            ruled_out = bias.gather(1, mask.clamp_max(ds.num_classes - 1)[:, None])
            mask = torch.where(ruled_out[:, 0] < 0, torch.full_like(mask, VOID), mask)
        loss, all_void = hard_cross_entropy(logits, mask, weights)
        return loss, {"skipped_f": all_void}, batch["image"].shape[0]

    nets = nn.ModuleDict({"ancillary": model})
    timing = fit(nets, step, batches, cfg, iters, device, out, "train-anc", quiet)
    if not distributed.is_main():
        return {}
    meta = model_meta("ancillary", spec, ds, box_spec, channels, IMAGENET_MEAN, IMAGENET_STD)
    # what conv's merger needs to know: did this net see all of F (then it has little to learn)
    meta["trained_on"] = {"split": split.to_dict(), "full_fraction": full_fraction,
                          "num_images": len(full_ids), "num_full": num_full}  # fmt: skip
    return finish_run(out, model, meta, ds, val_split, device, timing, iters,
                      "train-anc (boxes given)", quiet)  # fmt: skip
