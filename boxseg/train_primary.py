"""`boxseg train-primary`: train p(y|x) on F (hard labels) + W (soft targets q, detached).

Without --logits it trains on F alone (the F-only baseline).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

from boxseg.checkpoint import save_model
from boxseg.data.boxes import BoxSpec
from boxseg.data.formats import open_dataset
from boxseg.data.sample import VOID
from boxseg.data.split import SplitSpec, split_full_weak
from boxseg.data.torchsets import AugmentSpec, FullTrainSet, WeakTrainSet
from boxseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from boxseg.engine import TrainConfig, fit, forever, make_loader, resolve_device, total_iters
from boxseg.errors import BoxsegError
from boxseg.evaluate import evaluate_model
from boxseg.io import append_jsonl
from boxseg.models import ModelSpec, build_model
from boxseg.run_dir import model_meta, prepare_run_dir, write_config
from boxseg.selfcorr import SELF_CORR_MODES, alpha_at, soft_cross_entropy, soft_target
from boxseg.store import LogitsStore


def check_alpha(alpha_start: float, alpha_end: float, decay_fraction: float) -> None:
    if not 0 < alpha_end <= alpha_start:
        raise BoxsegError(
            f"--alpha-start {alpha_start} / --alpha-end {alpha_end}: "
            "need 0 < alpha-end <= alpha-start"
        )
    if not 0 < decay_fraction <= 1:
        raise BoxsegError(f"--alpha-decay-fraction {decay_fraction}: must be in (0, 1]")


def paired(full: Iterator[dict], weak: Iterator[dict]) -> Iterator[dict]:
    """One F batch and one W batch per step, as one dict."""
    for f, w in zip(full, weak, strict=False):
        yield {
            "image_f": f["image"],
            "mask": f["mask"],
            "image_w": w["image"],
            "logits": w["logits"],
            "valid": w["valid"],
        }


def train_primary(
    data: Path,
    out: Path,
    split: SplitSpec,
    spec: ModelSpec,
    cfg: TrainConfig,
    logits: str | None = None,
    self_corr: str = "none",
    alpha_start: float = 30.0,
    alpha_end: float = 0.5,
    alpha_decay_fraction: float = 0.5,
    weak_weight: float = 1.0,
    weak_batch_size: int | None = None,
    pretrained: str = "none",
    val_split: str | None = "val",
    quiet: bool = False,
) -> dict:
    """Train, write RUN/model.pt, config.json, metrics.jsonl; return the val scores (or {})."""
    cfg.validate()
    if self_corr not in SELF_CORR_MODES:
        raise BoxsegError(f"--self-corr {self_corr}: choose from {', '.join(SELF_CORR_MODES)}")
    check_alpha(alpha_start, alpha_end, alpha_decay_fraction)
    if weak_weight < 0:
        raise BoxsegError(f"--weak-weight {weak_weight}: must be >= 0")
    device = resolve_device(cfg.device)
    ds = open_dataset(data)
    full_ids, weak_ids = split_full_weak(ds.ids(split.split), split)
    if logits is not None:
        if not weak_ids:
            raise BoxsegError("the split leaves no weak images (W is empty): lower --num-full")
        LogitsStore.open(logits).check_matches(list(ds.class_names), weak_ids)
    out = prepare_run_dir(out)
    torch.manual_seed(cfg.seed)
    model = build_model(spec, ds.num_classes, None, pretrained).to(device)
    aug = AugmentSpec(cfg.crop, (cfg.scale_min, cfg.scale_max))
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    f_loader = make_loader(
        FullTrainSet(ds, split.split, full_ids, BoxSpec(), aug, False, mean, std),
        cfg.batch_size,
        cfg.workers,
    )
    iters = total_iters(cfg, f_loader)
    mode = "f_only" if logits is None else self_corr
    write_config(
        out,
        "train-primary",
        {
            "data": ds.describe(),
            "split": split.to_dict(),
            "num_full": len(full_ids),
            "num_weak": len(weak_ids) if logits else 0,
            "logits": logits,
            "self_corr": mode,
            "alpha": {
                "start": alpha_start,
                "end": alpha_end,
                "decay_fraction": alpha_decay_fraction,
            },
            "weak_weight": weak_weight,
            "model": spec.to_dict(),
            "pretrained": pretrained,
            "train": cfg.to_dict(),
            "iters": iters,
        },
        device,
    )
    metrics = out / "metrics.jsonl"
    metrics.unlink(missing_ok=True)

    if logits is None:
        batches: Iterator[dict] = forever(f_loader)

        def step(batch: dict, _: int):
            out_f = model(batch["image"])
            loss = F.cross_entropy(out_f.float(), batch["mask"], ignore_index=VOID)
            return loss, {}, batch["image"].shape[0]
    else:
        w_set = WeakTrainSet(ds, split.split, weak_ids, logits, aug, mean, std)
        w_loader = make_loader(w_set, weak_batch_size or cfg.batch_size, cfg.workers)
        batches = paired(forever(f_loader), forever(w_loader))

        def step(batch: dict, i: int):
            nf = batch["image_f"].shape[0]
            out_all = model(torch.cat([batch["image_f"], batch["image_w"]]))
            out_f, out_w = out_all[:nf], out_all[nf:]
            loss_f = F.cross_entropy(out_f.float(), batch["mask"], ignore_index=VOID)
            alpha = alpha_at(i, iters, alpha_start, alpha_end, alpha_decay_fraction)
            q = soft_target(batch["logits"], out_w, self_corr, alpha)
            loss_w = soft_cross_entropy(out_w, q, batch["valid"])
            logs = {"loss_f": loss_f.item(), "loss_w": loss_w.item(), "alpha": alpha}
            return loss_f + weak_weight * loss_w, logs, out_all.shape[0]

    timing = fit(model, step, batches, cfg, iters, device, metrics, f"train-primary {mode}", quiet)
    meta = model_meta("primary", spec, ds, BoxSpec(), None, mean, std) | {"self_corr": mode}
    save_model(out / "model.pt", model, meta)
    result: dict = {}
    if val_split and ds.has_split(val_split):
        result = evaluate_model(model, meta, ds, val_split, device, quiet)
        append_jsonl(metrics, {"step": iters, f"{val_split}_miou": result["miou"], **timing})
        if not quiet:
            print(f"train-primary ({mode}): {val_split} mIoU {result['miou']:.2f}")
    return result
