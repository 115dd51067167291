"""`boxseg train-primary`: train p(y|x) on F (hard labels) + W (soft targets q, detached).

W's ancillary logits come from a store (`--logits`) or from running the ancillary net online
on each augmented crop (`--anc-model`): a target source of weak_targets.py, box-consistent at
pixel level. Without either, it trains on F alone (the F-only baseline). `--self-corr conv`
runs stages 2 and 3 of the paper's recipe: primary + merger g on F for `--conv-warmup` steps,
then F and W together. The loss is losses.Objective; this module only assembles the pieces.
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
from boxseg.data.split import split_dataset
from boxseg.data.torchsets import AugmentSpec, FullTrainSet
from boxseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from boxseg.data.validate import check_sizes, usable_ids
from boxseg.engine import TrainConfig, fit, resolve_device, total_iters
from boxseg.errors import BoxsegError
from boxseg.evaluate import check_classes
from boxseg.losses import Correction, Objective, weak_loss_scale
from boxseg.models import ModelSpec, build_model, say_pretrained
from boxseg.primary_options import CorrectionOptions, PrimaryOptions
from boxseg.run_dir import check_val_split, finish_run, model_meta, prepare_run_dir, write_config
from boxseg.selfcorr import f_anc_logits, make_correction
from boxseg.store import InMemoryLogits, LogitsSource, LogitsStore
from boxseg.weak_targets import (
    OnlineAncillary,
    OnlineWeakTrainSet,
    Source,
    StoredLogits,
    WeakTrainSet,
    constrained,
)


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
    store: LogitsSource | None = None


@dataclass
class RunFacts:
    """What a run found beside its options, which config.json records: F's ids, W's source,
    the ancillary net, the steps (`warmup` of them conv's stage 2), the batch sizes delivered,
    the W term's scale, the class weights and whether pretrained weights were loaded."""

    full_ids: list[str]
    weak: WeakSource | None
    anc: Ancillary | None
    iters: int
    warmup: int
    sizes: dict[str, int]
    w_scale: float
    weights: torch.Tensor | None
    pretrained_loaded: dict | None  # what the backbone's pretrained weights filled


def train_primary(opts: PrimaryOptions, quiet: bool = False) -> dict:
    """Train, write RUN/model.pt, config.json, metrics.jsonl; return the val scores (or {}).

    `opts.train.iters` counts the steps with W; conv's stage 2 (`opts.correction.conv_warmup`,
    F only) comes on top. primary_options.py says what each option does."""
    opts.validate()
    cfg = opts.train
    device = distributed.join_group(resolve_device(cfg.device))
    ds = open_dataset(opts.data)
    check_val_split(ds, opts.val_split)
    full_ids, weak_ids = split_dataset(ds, opts.split)
    out = opts.out
    if distributed.is_main():
        out = prepare_run_dir(out, "train-primary", opts.data, cfg.resume, cfg.overwrite)
    out = Path(out)
    hush = quiet or not distributed.is_main()
    full_ids = usable_ids(
        ds, opts.split.split, full_ids, True, opts.skip_bad, out / "skipped_full.json", "F", hush
    )
    anc = load_ancillary(opts, ds, device, full_ids)
    aug = AugmentSpec(cfg.crop, (cfg.scale_min, cfg.scale_max))
    weak = weak_source(opts, ds, weak_ids, anc, out, aug, hush)
    weights = resolve_class_weights(opts.losses.class_weights, ds, opts.split.split, full_ids)
    torch.manual_seed(cfg.seed)
    model = build_model(opts.model, ds.num_classes, None, opts.pretrained).to(device)
    say_pretrained(model, quiet)
    f_batches = full_batches(opts, ds, full_ids, anc, aug)
    w_steps = total_iters(cfg, f_batches)  # steps with a W batch (all steps without W)
    warmup = stage2_steps(opts.correction.mode == "conv", opts.correction.conv_warmup, w_steps)
    iters, nw = w_steps + warmup, opts.weak.batch_size or cfg.batch_size
    correction = self_correction(opts.correction, ds.num_classes, iters, weak, anc)
    trainable = nn.ModuleDict({"primary": model})
    if correction.merger is not None:
        trainable["merger"] = correction.merger.to(device)
    w_batches = weak_batches(weak, nw, cfg, warmup, opts.weak.batch_size is not None)
    sizes = batch_sizes(f_batches, w_batches, nw)
    w_scale = weak_loss_scale(opts.weak.weight, sizes["batch_size"], sizes["weak_batch_size"])
    terms = box_terms(opts.weak.boxes, weak, iters, ds.background, anc)
    w_logits = weak.logits if weak else None
    on_device = None if weights is None else weights.to(device)  # moved once, not every step
    objective = Objective(correction, w_logits, on_device, w_scale, terms, opts.losses.hard_pixels)
    if distributed.is_main():
        pretrained_loaded = model.pretrained
        facts = RunFacts(
            full_ids, weak, anc, iters, warmup, sizes, w_scale, weights, pretrained_loaded
        )
        write_config(out, "train-primary", run_config(opts, ds, facts), device)
    batches = mixed(f_batches, w_batches, warmup)
    mode = opts.mode
    timing = fit(
        trainable, objective, batches, cfg, iters, device, out, f"train-primary {mode}", quiet
    )
    if not distributed.is_main():
        return {}
    meta = primary_meta(opts.model, ds, mode, correction.merger, opts.correction.conv_hidden)
    label = f"train-primary ({mode})"
    return finish_run(out, model, meta, ds, opts.val_split, device, timing, iters, label, quiet)


def full_batches(
    opts: PrimaryOptions,
    ds: SegDataset,
    full_ids: list[str],
    anc: Ancillary | None,
    aug: AugmentSpec,
) -> Batches:
    """F's batches of masked crops (conv: with their boxes, the ancillary net's inputs for g,
    and the box evidence its rule needs), with a warning when F is smaller than a batch."""
    cfg, conv = opts.train, opts.correction.mode == "conv"
    box_spec = BoxSpec.from_dict(anc.meta["boxes"]) if anc else BoxSpec()
    evidence = conv and anc.rule is not None
    f_set = FullTrainSet(
        ds,
        opts.split.split,
        full_ids,
        box_spec,
        aug,
        conv,
        IMAGENET_MEAN,
        IMAGENET_STD,
        evidence=evidence,
    )
    f_batches = Batches(f_set, cfg.batch_size, cfg.workers, cfg.seed)
    warn_if_short(f_batches, "F", "--batch-size")
    return f_batches


def self_correction(
    corr: CorrectionOptions,
    num_classes: int,
    iters: int,
    weak: WeakSource | None,
    anc: Ancillary | None,
) -> Correction:
    """q's correction for the mode asked (selfcorr.make_correction); conv's g reads the
    ancillary net's logits on F, made as W's were (a store's stride and dtype, W's rule but
    never void)."""
    like_store = None
    if weak is not None and isinstance(weak.store, LogitsStore):
        like_store = (weak.store.stride, weak.store.dtype)
    f_anc = f_anc_logits(anc.net, like_store, f_rule(anc.rule)) if anc else None
    return make_correction(
        corr.mode,
        num_classes,
        iters,
        corr.alpha_start,
        corr.alpha_end,
        corr.alpha_decay_fraction,
        corr.conv_hidden,
        corr.conv_grad_to_primary,
        f_anc,
    )


def primary_meta(
    spec: ModelSpec, ds: SegDataset, mode: str, merger: nn.Module | None, hidden: int
) -> dict:
    """What model.pt records of a primary net (and conv's merger g beside it)."""
    meta = model_meta("primary", spec, ds, BoxSpec(), None, IMAGENET_MEAN, IMAGENET_STD)
    meta["self_corr"] = mode
    if merger is not None:
        meta["merger"] = {"hidden": hidden}
        meta["merger_state_dict"] = {k: v.detach().cpu() for k, v in merger.state_dict().items()}
    return meta


def box_terms(
    weak_boxes: WeakBoxLoss,
    weak: WeakSource | None,
    iters: int,
    background: int | None,
    anc: Ancillary | None,
) -> BoxTerms | None:
    """The box-supervised terms on W (`--weak-boxes`), or None; a store must hold W's boxes.
    Their colour term follows the box constraint of W's targets (the store's, or the online
    ancillary net's)."""
    if not weak_boxes.enabled:
        return None
    if weak.kind == "store" and weak.store.rule is None:
        raise BoxsegError(
            "--weak-boxes: the store holds no boxes (written with "
            "--no-box-constraint); write it with the constraint on"
        )
    rule = weak.store.rule if weak.kind == "store" else anc.rule
    return BoxTerms(weak_boxes, iters, background, rule)


def load_ancillary(
    opts: PrimaryOptions, ds: SegDataset, device: torch.device, full_ids: list[str]
) -> Ancillary | None:
    """The frozen ancillary net at `opts.weak.anc_model` (None without one), checked for this
    data (and, for conv, for what it trained on)."""
    anc_model, corr = opts.weak.anc_model, opts.correction
    if anc_model is None:
        return None
    net, meta = load_model(anc_model, kind="ancillary", device=device)
    check_classes(meta, ds, str(anc_model))
    if corr.mode == "conv" and not corr.allow_full_anc:
        check_anc_for_conv(meta, anc_model, full_ids)
    return Ancillary(frozen(net), meta, Path(anc_model), rule_of(meta, opts.weak.constraint))


def weak_source(
    opts: PrimaryOptions,
    ds: SegDataset,
    weak_ids: list[str],
    anc: Ancillary | None,
    out: Path,
    aug: AugmentSpec,
    quiet: bool = True,
) -> WeakSource | None:
    """W's target source: the store at `opts.weak.logits` (checked against the data, the
    ancillary net and the constraint), else the ancillary net online, else None (F only)."""
    split, logits, skip_bad = opts.split.split, opts.weak.logits, opts.skip_bad
    box_constraint = opts.weak.constraint
    if logits is None and anc is None:
        return None
    if not weak_ids:
        raise BoxsegError("the split leaves no weak images (W is empty): lower --num-full")
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if logits is None:  # online: W's boxes (derived from masks on segnet data)
        ids = usable_ids(
            ds,
            split,
            weak_ids,
            ds.boxes_from_masks,
            skip_bad,
            out / "skipped_weak.json",
            "W",
            quiet,
        )
        w_set = OnlineWeakTrainSet(
            ds, split, ids, BoxSpec.from_dict(anc.meta["boxes"]), aug, mean, std
        )
        return WeakSource("online", ids, w_set, constrained(OnlineAncillary(anc.net), anc.rule))
    store = logits if isinstance(logits, InMemoryLogits) else LogitsStore.open(logits)
    left_out = set(store.attrs.get("skipped_ids") or [])
    if left_out and not skip_bad:
        raise BoxsegError(
            f"{logits}: gen-logits left out {len(left_out)} bad images "
            "(--skip-bad); pass --skip-bad here too"
        )
    ids = [i for i in weak_ids if i not in left_out]  # W's masks are never opened: images only
    ids = usable_ids(ds, split, ids, False, skip_bad, out / "skipped_weak.json", "W", quiet)
    store.check_matches(list(ds.class_names), ids)
    check_sizes(ds, split, store, ids, str(logits))
    if anc is not None and isinstance(store, LogitsStore):  # conv: F's inputs must match W's
        if store.attrs.get("checkpoint_sha256") != file_sha256(anc.path):
            raise BoxsegError(
                f"{logits}: made by another ancillary model than {anc.path}; run gen-logits with it"
            )
        rule = store.attrs.get("box_constraint")
        if rule != box_constraint.to_dict():
            raise BoxsegError(
                f"{logits}: made with box constraint {rule}, this run applies "
                f"{box_constraint.to_dict()} to F's ancillary logits; pass the "
                "same --box-constraint/--box-prior to both"
            )
    w_set = WeakTrainSet(ds, split, ids, logits, aug, mean, std)
    return WeakSource(
        "store", ids, w_set, constrained(StoredLogits(store.may_hold_void), store.rule), store
    )


def stage2_steps(conv: bool, conv_warmup: int | None, w_steps: int) -> int:
    """Steps of conv's stage 2 (primary and g on F only): `conv_warmup`, default a third of the
    steps with W; 0 for the other modes."""
    if not conv:
        return 0
    warmup = w_steps // 3 if conv_warmup is None else conv_warmup
    if warmup < 0:
        raise BoxsegError(f"--conv-warmup {warmup}: must be >= 0")
    return warmup


def weak_batches(
    weak: WeakSource | None, nw: int, cfg: TrainConfig, warmup: int, own_size: bool
) -> Batches | None:
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


def applied_rule(
    weak: WeakSource | None, anc: Ancillary | None, box_constraint: BoxConstraint
) -> dict | None:
    """The box rule W's targets follow (`rule`: what readers apply; None: none) and the option
    it came from (`option`: gen-logits' record for a net's store, none for a box rule's, this
    run's for the ancillary net run online); None without W."""
    if weak is None:
        return None
    if weak.kind == "store":
        rule, option = (
            weak.store.rule,
            (getattr(weak.store, "attrs", None) or {}).get("box_constraint"),
        )
    else:
        rule, option = anc.rule, box_constraint.to_dict()
    return {"rule": None if rule is None else rule.to_dict(), "option": option}


def run_config(opts: PrimaryOptions, ds: SegDataset, facts: RunFacts) -> dict:
    """What config.json records of a train-primary run: its options and what it found, under
    the keys runs have always had."""
    weak, anc, corr, warmup = facts.weak, facts.anc, opts.correction, facts.warmup
    logits, weights = opts.weak.logits, facts.weights
    return {
        "data": ds.describe(),
        "split": opts.split.to_dict(),
        "num_full": len(facts.full_ids),
        "num_weak": len(weak.ids) if weak else 0,
        "weak_source": weak.kind if weak else None,
        "logits": logits if logits is None else str(logits),
        "anc_model": str(anc.path) if anc else None,
        "self_corr": opts.mode,
        "anc_trained_on": anc_trained_on(anc, facts.full_ids),
        "alpha": {
            "start": corr.alpha_start,
            "end": corr.alpha_end,
            "decay_fraction": corr.alpha_decay_fraction,
        },
        "conv": {
            "hidden": corr.conv_hidden,
            "warmup": warmup,
            "grad_to_primary": corr.conv_grad_to_primary,
        },
        "weak_weight": opts.weak.weight,
        **facts.sizes,
        "weak_loss_scale": facts.w_scale,
        "model": opts.model.to_dict(),
        "pretrained": opts.pretrained,
        "pretrained_loaded": facts.pretrained_loaded,
        "class_weights": {
            "option": opts.losses.class_weights,
            "values": None if weights is None else weights.tolist(),
        },
        "box_constraint": applied_rule(weak, anc, opts.weak.constraint),
        "train": opts.train.to_dict(),
        "iters": facts.iters,
        "w_steps": (facts.iters - warmup) if weak else 0,
        "stage2_steps": warmup,
        "weak_boxes": opts.weak.boxes.to_dict(),
        "hard_pixels": opts.losses.hard_pixels,
    }


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
        how = "on all of F" + (
            "" if trained_on else " (its model.pt does not say: made before boxseg recorded it)"
        )
    raise BoxsegError(
        f"{anc_model}: --self-corr conv needs an ancillary net trained on part of F (the "
        f"paper's stage 1), this one was trained {how}; train one with train-anc "
        "--full-fraction 0.5 (or --full-list a part of F), or pass --allow-full-anc"
    )
