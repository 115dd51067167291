"""`boxseg train-primary`: train p(y|x) on F (hard labels) + W (soft targets q, detached).

W's ancillary logits come from a store (`--logits`) or from running the ancillary net online
on each augmented crop (`--anc-model`): a target source of weak_targets.py, box-consistent at
pixel level. Without either, it trains on F alone (the F-only baseline). `--self-corr conv`
runs stages 2 and 3 of the paper's recipe: primary + merger g on F for `--conv-warmup` steps,
then F and W together. The loss is selfcorr.Objective; this module only assembles the pieces.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from boxseg import distributed
from boxseg.box_constraint import BoxConstraint, ConstraintRule, rule_of
from boxseg.box_losses import BoxTerms, WeakBoxLoss
from boxseg.checkpoint import file_sha256, load_model
from boxseg.class_weights import resolve_class_weights
from boxseg.data.boxes import BoxSpec
from boxseg.data.formats import SegDataset, open_dataset
from boxseg.data.sampling import Batches, mixed, warn_if_short
from boxseg.data.split import SplitSpec, split_dataset
from boxseg.data.torchsets import AugmentSpec, FullTrainSet
from boxseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from boxseg.data.validate import usable_ids
from boxseg.engine import TrainConfig, fit, resolve_device, total_iters
from boxseg.errors import BoxsegError
from boxseg.evaluate import check_classes
from boxseg.models import ModelSpec, build_model, say_pretrained
from boxseg.run_dir import check_val_split, finish_run, model_meta, prepare_run_dir, write_config
from boxseg.selfcorr import (
    SELF_CORR_MODES,
    Objective,
    f_anc_logits,
    make_correction,
    weak_loss_scale,
)
from boxseg.store import InMemoryLogits, LogitsStore
from boxseg.weak_targets import (
    OnlineAncillary,
    OnlineWeakTrainSet,
    Source,
    StoredLogits,
    WeakTrainSet,
    check_sizes,
    constrained,
)


def check_alpha(alpha_start: float, alpha_end: float, decay_fraction: float) -> None:
    if not 0 < alpha_end <= alpha_start:
        raise BoxsegError(
            f"--alpha-start {alpha_start} / --alpha-end {alpha_end}: "
            "need 0 < alpha-end <= alpha-start"
        )
    if not 0 < decay_fraction <= 1:
        raise BoxsegError(f"--alpha-decay-fraction {decay_fraction}: must be in (0, 1]")


def frozen(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@dataclass
class Ancillary:
    """The frozen ancillary net (online W targets, conv's F inputs) and what it implies."""

    net: nn.Module
    meta: dict
    path: Path
    rule: ConstraintRule | None  # its box constraint at pixel level (None: off)


@dataclass
class WeakSource:
    """W's target source: its training set, the logits callable, the ids, and the store."""

    kind: str  # "store" or "online"
    ids: list[str]
    dataset: Dataset
    logits: Source
    store: LogitsStore | InMemoryLogits | None = None


def train_primary(
    data: Path, out: Path, split: SplitSpec, spec: ModelSpec, cfg: TrainConfig,
    logits: str | InMemoryLogits | None = None, anc_model: Path | None = None,
    self_corr: str = "none", alpha_start: float = 30.0, alpha_end: float = 0.5,
    alpha_decay_fraction: float = 0.5, conv_hidden: int = 128, conv_warmup: int | None = None,
    conv_grad_to_primary: bool = False, weak_weight: float = 1.0,
    weak_batch_size: int | None = None, pretrained: str = "none", val_split: str | None = "val",
    quiet: bool = False, skip_bad: bool = False, class_weights: str = "none",
    box_constraint: BoxConstraint | None = None, allow_full_anc: bool = False,
    weak_boxes: WeakBoxLoss | None = None, hard_pixels: float = 1.0) -> dict:  # fmt: skip
    """Train, write RUN/model.pt, config.json, metrics.jsonl; return the val scores (or {}).

    `class_weights` (none, median-freq or a file) weights both loss terms per class;
    `box_constraint` (default on) makes the online ancillary logits box-consistent, as every
    reader of a store does. `iters` counts the steps with W; conv's stage 2 (`conv_warmup`,
    F only) comes on top. `allow_full_anc`: let conv use an ancillary net trained on all of F.
    `weak_boxes`: box-supervised terms (box_losses.py) on W; `hard_pixels` < 1: OHEM-style."""
    box_constraint, weak_boxes = box_constraint or BoxConstraint(), weak_boxes or WeakBoxLoss()
    check_options(cfg, box_constraint, self_corr, alpha_start, alpha_end, alpha_decay_fraction,
                  weak_weight, weak_batch_size, logits, anc_model, weak_boxes, hard_pixels)
    device = resolve_device(cfg.device)
    ds = open_dataset(data)
    check_val_split(ds, val_split)
    full_ids, weak_ids = split_dataset(ds, split)
    if distributed.is_main():
        out = prepare_run_dir(out, "train-primary", data, cfg.resume, cfg.overwrite)
    out = Path(out)
    full_ids = usable_ids(ds, split.split, full_ids, True, skip_bad,
                          Path(out) / "skipped_full.json", "F",
                          quiet or not distributed.is_main())  # fmt: skip
    anc = load_ancillary(anc_model, ds, device, self_corr, allow_full_anc, box_constraint,
                         full_ids)
    aug = AugmentSpec(cfg.crop, (cfg.scale_min, cfg.scale_max))
    weak = weak_source(ds, split.split, weak_ids, logits, anc, box_constraint, skip_bad,
                       Path(out), aug, quiet or not distributed.is_main())  # fmt: skip
    weights = resolve_class_weights(class_weights, ds, split.split, full_ids)
    torch.manual_seed(cfg.seed)
    model = build_model(spec, ds.num_classes, None, pretrained).to(device)
    say_pretrained(model, quiet)
    box_spec = BoxSpec.from_dict(anc.meta["boxes"]) if anc else BoxSpec()
    conv = self_corr == "conv"
    f_set = FullTrainSet(ds, split.split, full_ids, box_spec, aug, conv, IMAGENET_MEAN,
                         IMAGENET_STD, evidence=conv and anc.rule is not None)  # fmt: skip
    f_batches = Batches(f_set, cfg.batch_size, cfg.workers, cfg.seed)
    warn_if_short(f_batches, "F", "--batch-size")
    w_steps = total_iters(cfg, f_batches)  # steps with a W batch (all steps without W)
    warmup = stage2_steps(conv, conv_warmup, w_steps)
    iters, nw = w_steps + warmup, weak_batch_size or cfg.batch_size
    like_store = None
    if weak is not None and isinstance(weak.store, LogitsStore):
        like_store = (weak.store.stride, weak.store.dtype)
    f_anc = f_anc_logits(anc.net, like_store, f_rule(anc.rule)) if anc else None
    correction = make_correction(self_corr, ds.num_classes, iters, alpha_start, alpha_end,
                                 alpha_decay_fraction, conv_hidden, conv_grad_to_primary,
                                 f_anc)  # fmt: skip
    trainable = nn.ModuleDict({"primary": model})
    if correction.merger is not None:
        trainable["merger"] = correction.merger.to(device)
    w_batches = weak_batches(weak, nw, cfg, warmup, weak_batch_size is not None)
    sizes = batch_sizes(f_batches, w_batches, nw)
    w_scale = weak_loss_scale(weak_weight, sizes["batch_size"], sizes["weak_batch_size"])
    objective = Objective(correction, weak.logits if weak else None, weights, w_scale,
                          box_terms(weak_boxes, weak, iters, ds.background, anc), hard_pixels)
    mode = self_corr if weak else "f_only"
    if distributed.is_main():
        write_config(out, "train-primary", run_config(
            ds, split, full_ids, weak, logits, anc, mode, (alpha_start, alpha_end,
            alpha_decay_fraction), (conv_hidden, warmup, conv_grad_to_primary), weak_weight,
            sizes, w_scale, spec, pretrained, model, class_weights, weights, box_constraint, cfg,
            iters) | {"weak_boxes": weak_boxes.to_dict(), "hard_pixels": hard_pixels}, device)
    batches = mixed(f_batches, w_batches, warmup)
    timing = fit(trainable, objective, batches, cfg, iters, device, out,
                 f"train-primary {mode}", quiet)  # fmt: skip
    if not distributed.is_main():
        return {}
    meta = primary_meta(spec, ds, mode, correction.merger, conv_hidden)
    return finish_run(out, model, meta, ds, val_split, device, timing, iters,
                      f"train-primary ({mode})", quiet)  # fmt: skip


def primary_meta(spec: ModelSpec, ds: SegDataset, mode: str, merger: nn.Module | None,
                 hidden: int) -> dict:  # fmt: skip
    """What model.pt records of a primary net (and conv's merger g beside it)."""
    meta = model_meta("primary", spec, ds, BoxSpec(), None, IMAGENET_MEAN, IMAGENET_STD)
    meta["self_corr"] = mode
    if merger is not None:
        meta["merger"] = {"hidden": hidden}
        meta["merger_state_dict"] = {k: v.detach().cpu() for k, v in merger.state_dict().items()}
    return meta


def check_options(cfg: TrainConfig, box_constraint: BoxConstraint, self_corr: str,
                  alpha_start: float, alpha_end: float, alpha_decay_fraction: float,
                  weak_weight: float, weak_batch_size: int | None, logits,
                  anc_model, weak_boxes: WeakBoxLoss,
                  hard_pixels: float = 1.0) -> None:  # fmt: skip
    """One-line errors for option values and combinations that cannot work."""
    cfg.validate()
    box_constraint.validate()
    weak_boxes.validate()
    if weak_boxes.enabled and logits is None and anc_model is None:
        raise BoxsegError("--weak-boxes needs W: give --logits or --anc-model")
    if self_corr not in SELF_CORR_MODES:
        raise BoxsegError(f"--self-corr {self_corr}: choose from {', '.join(SELF_CORR_MODES)}")
    check_alpha(alpha_start, alpha_end, alpha_decay_fraction)
    if weak_weight < 0:
        raise BoxsegError(f"--weak-weight {weak_weight}: must be >= 0")
    if not 0.0 < hard_pixels <= 1.0:
        raise BoxsegError(f"--hard-pixels {hard_pixels}: must be in (0, 1]")
    if weak_batch_size is not None and weak_batch_size < 1:
        raise BoxsegError(f"--weak-batch-size {weak_batch_size}: must be at least 1")
    if self_corr == "conv" and anc_model is None:
        raise BoxsegError("--self-corr conv needs --anc-model (g learns on F from its logits)")
    if logits is not None and anc_model is not None and self_corr != "conv":
        raise BoxsegError("give --logits or --anc-model, not both (both only with conv)")
    if anc_model is None and box_constraint != BoxConstraint():
        raise BoxsegError(f"box constraint {box_constraint.to_dict()}: not used without "
                          "--anc-model (a store's targets follow the rule gen-logits wrote "
                          "them with)")  # fmt: skip


def box_terms(weak_boxes: WeakBoxLoss, weak: WeakSource | None, iters: int,
              background: int | None, anc: Ancillary | None) -> BoxTerms | None:  # fmt: skip
    """The box-supervised terms on W (`--weak-boxes`), or None; a store must hold W's boxes.
    Their colour term follows the box constraint of W's targets (the store's, or the online
    ancillary net's)."""
    if not weak_boxes.enabled:
        return None
    if weak.kind == "store" and weak.store.rule is None:
        raise BoxsegError("--weak-boxes: the store holds no boxes (written with "
                          "--no-box-constraint); write it with the constraint on")  # fmt: skip
    rule = weak.store.rule if weak.kind == "store" else anc.rule
    return BoxTerms(weak_boxes, iters, background, rule)


def load_ancillary(anc_model: Path | None, ds: SegDataset, device: torch.device,
                   self_corr: str, allow_full_anc: bool, box_constraint: BoxConstraint,
                   full_ids: list[str]) -> Ancillary | None:  # fmt: skip
    """The frozen ancillary net at `anc_model` (None without one), checked for this data."""
    if anc_model is None:
        return None
    net, meta = load_model(anc_model, kind="ancillary", device=device)
    check_classes(meta, ds, str(anc_model))
    if self_corr == "conv" and not allow_full_anc:
        check_anc_for_conv(meta, anc_model, full_ids)
    return Ancillary(frozen(net), meta, Path(anc_model), rule_of(meta, box_constraint))


def weak_source(ds: SegDataset, split: str, weak_ids: list[str],
                logits: str | InMemoryLogits | None, anc: Ancillary | None,
                box_constraint: BoxConstraint, skip_bad: bool, out: Path,
                aug: AugmentSpec, quiet: bool = True) -> WeakSource | None:  # fmt: skip
    """W's target source: the store at `logits` (checked against the data, the ancillary net
    and the constraint), else the ancillary net online, else None (F only)."""
    if logits is None and anc is None:
        return None
    if not weak_ids:
        raise BoxsegError("the split leaves no weak images (W is empty): lower --num-full")
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if logits is None:  # online: W's boxes (derived from masks on segnet data)
        ids = usable_ids(ds, split, weak_ids, ds.boxes_from_masks, skip_bad,
                         out / "skipped_weak.json", "W", quiet)  # fmt: skip
        w_set = OnlineWeakTrainSet(ds, split, ids, BoxSpec.from_dict(anc.meta["boxes"]), aug,
                                   mean, std)  # fmt: skip
        return WeakSource("online", ids, w_set, constrained(OnlineAncillary(anc.net), anc.rule))
    store = logits if isinstance(logits, InMemoryLogits) else LogitsStore.open(logits)
    left_out = set(store.attrs.get("skipped_ids") or [])
    if left_out and not skip_bad:
        raise BoxsegError(f"{logits}: gen-logits left out {len(left_out)} bad images "
                          "(--skip-bad); pass --skip-bad here too")  # fmt: skip
    ids = [i for i in weak_ids if i not in left_out]  # W's masks are never opened: images only
    ids = usable_ids(ds, split, ids, False, skip_bad, out / "skipped_weak.json", "W", quiet)
    store.check_matches(list(ds.class_names), ids)
    check_sizes(ds, split, store, ids, str(logits))
    if anc is not None and isinstance(store, LogitsStore):  # conv: F's inputs must match W's
        if store.attrs.get("checkpoint_sha256") != file_sha256(anc.path):
            raise BoxsegError(f"{logits}: made by another ancillary model than {anc.path}; "
                              "run gen-logits with it")  # fmt: skip
        rule = store.attrs.get("box_constraint")
        if rule != box_constraint.to_dict():
            raise BoxsegError(f"{logits}: made with box constraint {rule}, this run applies "
                              f"{box_constraint.to_dict()} to F's ancillary logits; pass the "
                              "same --box-constraint/--box-prior to both")  # fmt: skip
    w_set = WeakTrainSet(ds, split, ids, logits, aug, mean, std)
    return WeakSource("store", ids, w_set,
                      constrained(StoredLogits(store.may_hold_void), store.rule), store)


def stage2_steps(conv: bool, conv_warmup: int | None, w_steps: int) -> int:
    """Steps of conv's stage 2 (primary and g on F only): `conv_warmup`, default a third of the
    steps with W; 0 for the other modes."""
    if not conv:
        return 0
    warmup = w_steps // 3 if conv_warmup is None else conv_warmup
    if warmup < 0:
        raise BoxsegError(f"--conv-warmup {warmup}: must be >= 0")
    return warmup


def weak_batches(weak: WeakSource | None, nw: int, cfg: TrainConfig, warmup: int,
                 own_size: bool) -> Batches | None:  # fmt: skip
    """W's batches of `nw` images, joining at step `warmup` (0 unless conv: the stream starts
    there), with a warning when W is smaller than its batch; None without W."""
    if weak is None:
        return None
    batches = Batches(weak.dataset, nw, cfg.workers, cfg.seed + 1, offset=warmup)
    warn_if_short(batches, "W", "--weak-batch-size" if own_size else "--batch-size")
    return batches


def batch_sizes(f_batches: Batches, w_batches: Batches | None, nw: int) -> dict[str, int]:
    """The batch sizes each step delivers (per process; a set smaller than the batch asked
    for gives its whole share), which the W term's weight follows, and those asked for."""
    return {
        "batch_size": f_batches.batch_size,
        "batch_size_requested": f_batches.requested,
        "weak_batch_size": w_batches.batch_size if w_batches else nw,
        "weak_batch_size_requested": nw,
    }


def anc_trained_on(anc: Ancillary | None, full_ids: list[str]) -> dict | None:
    """What the ancillary net trained on, as config.json records it: its model.pt's record with
    the id list replaced by how many of this run's F images it saw."""
    if anc is None or anc.meta.get("trained_on") is None:
        return None
    record = dict(anc.meta["trained_on"])
    ids = record.pop("ids", None)
    record["f_images_seen"] = None if ids is None else len(set(ids) & set(full_ids))
    return record


def f_rule(rule: ConstraintRule | None) -> ConstraintRule | None:
    """The rule for conv's F inputs: W's, but never void (F's pixels all have a mask to learn
    g on; `void_uncovered` only withholds W targets where a box may be missing)."""
    return None if rule is None else replace(rule, void_uncovered=False)


def applied_rule(weak: WeakSource | None, anc: Ancillary | None,
                 box_constraint: BoxConstraint) -> dict | None:  # fmt: skip
    """The box rule W's targets follow (`rule`: what readers apply; None: none) and the option
    it came from (`option`: gen-logits' record for a net's store, none for a box rule's, this
    run's for the ancillary net run online); None without W."""
    if weak is None:
        return None
    if weak.kind == "store":
        rule, option = weak.store.rule, (getattr(weak.store, "attrs", None) or {}).get(
            "box_constraint")  # fmt: skip
    else:
        rule, option = anc.rule, box_constraint.to_dict()
    return {"rule": None if rule is None else rule.to_dict(), "option": option}


def run_config(ds, split, full_ids, weak, logits, anc, mode, alpha, conv, weak_weight, sizes,
               w_scale, spec, pretrained, model, class_weights, weights, box_constraint, cfg,
               iters) -> dict:  # fmt: skip
    """What config.json records of a train-primary run."""
    warmup = conv[1]
    return {
        "data": ds.describe(), "split": split.to_dict(), "num_full": len(full_ids),
        "num_weak": len(weak.ids) if weak else 0, "weak_source": weak.kind if weak else None,
        "logits": logits if logits is None else str(logits),
        "anc_model": str(anc.path) if anc else None, "self_corr": mode,
        "anc_trained_on": anc_trained_on(anc, full_ids),
        "alpha": {"start": alpha[0], "end": alpha[1], "decay_fraction": alpha[2]},
        "conv": {"hidden": conv[0], "warmup": warmup, "grad_to_primary": conv[2]},
        "weak_weight": weak_weight, **sizes, "weak_loss_scale": w_scale,
        "model": spec.to_dict(), "pretrained": pretrained,
        "pretrained_loaded": model.backbone.pretrained,
        "class_weights": {"option": class_weights,
                          "values": None if weights is None else weights.tolist()},
        "box_constraint": applied_rule(weak, anc, box_constraint),
        "train": cfg.to_dict(), "iters": iters,
        "w_steps": (iters - warmup) if weak else 0, "stage2_steps": warmup,
    }  # fmt: skip


def check_anc_for_conv(anc_meta: dict, anc_model: Path, full_ids: list[str]) -> None:
    """Conv's merger learns on F to correct the ancillary logits; an ancillary net that trained
    on every image of this run's F is (near) right on all of them, so g would learn to trust it
    and correct nothing on W. Judged by the ids the net trained on (model.pt records them);
    checkpoints made before boxseg recorded them are judged by their --full-fraction."""
    trained_on = anc_meta.get("trained_on")
    seen = (trained_on or {}).get("ids")
    if seen is not None:
        if set(full_ids) - set(seen):
            return
        how = f"on all of F (every one of this run's {len(full_ids)} F images)"
    elif trained_on is not None and trained_on.get("full_fraction", 1.0) < 1.0:
        return
    else:
        how = "on all of F" + ("" if trained_on else " (its model.pt does not say: made before "
                                "boxseg recorded it)")  # fmt: skip
    raise BoxsegError(
        f"{anc_model}: --self-corr conv needs an ancillary net trained on part of F (the "
        f"paper's stage 1), this one was trained {how}; train one with train-anc "
        "--full-fraction 0.5 (or --full-list a part of F), or pass --allow-full-anc"
    )
