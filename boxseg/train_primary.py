"""`boxseg train-primary`: train p(y|x) on F (hard labels) + W (soft targets q, detached).

W's ancillary logits come from a store (`--logits`) or from running the ancillary net online
on each augmented crop (`--anc-model`). Without either, it trains on F alone (the F-only
baseline). `--self-corr conv` runs stages 2 and 3 of the paper's recipe: primary + merger g on
F for `--conv-warmup` steps, then F and W together.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from boxseg import distributed
from boxseg.box_constraint import BoxConstraint, constraint_of
from boxseg.checkpoint import file_sha256, load_model
from boxseg.class_weights import resolve_class_weights
from boxseg.data.boxes import BoxSpec
from boxseg.data.formats import open_dataset
from boxseg.data.sampling import Batches
from boxseg.data.split import SplitSpec, split_dataset
from boxseg.data.torchsets import AugmentSpec, FullTrainSet, OnlineWeakTrainSet, WeakTrainSet
from boxseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from boxseg.data.validate import check_image_file, usable_ids
from boxseg.engine import TrainConfig, fit, resolve_device, total_iters
from boxseg.errors import BoxsegError
from boxseg.evaluate import check_classes
from boxseg.models import ModelSpec, build_model, say_pretrained
from boxseg.run_dir import finish_run, model_meta, prepare_run_dir, write_config
from boxseg.selfcorr import (
    SELF_CORR_MODES,
    ConvCorrection,
    ConvMerger,
    LinearCorrection,
    NoCorrection,
    hard_cross_entropy,
    soft_cross_entropy,
)
from boxseg.store import InMemoryLogits, LogitsStore
from boxseg.targets import OnlineAncillary, StoredLogits, without_void


def check_alpha(alpha_start: float, alpha_end: float, decay_fraction: float) -> None:
    if not 0 < alpha_end <= alpha_start:
        raise BoxsegError(
            f"--alpha-start {alpha_start} / --alpha-end {alpha_end}: "
            "need 0 < alpha-end <= alpha-start"
        )
    if not 0 < decay_fraction <= 1:
        raise BoxsegError(f"--alpha-decay-fraction {decay_fraction}: must be in (0, 1]")


Stream = Callable[[int], dict]


def check_sizes(ds, split: str, store, weak_ids: list[str], location: str) -> None:
    """Every W image has the size its logits were made for (another dataset with the same ids
    would not); image headers only."""
    for image_id in weak_ids:
        h, w = check_image_file(ds.image_path(split, image_id))
        sh, sw = (int(v) for v in store.sizes[store.index(image_id)])
        if (sh, sw) != (h, w):
            raise BoxsegError(f"{location}: logits of {image_id} are for a {sw}x{sh} image, "
                              f"{ds.image_path(split, image_id)} is {w}x{h}")  # fmt: skip


def mixed(full: Stream, weak: Stream | None, weak_from: int) -> Stream:
    """next_batch(step): an F batch, plus a W batch from step `weak_from` on (conv's stage 3)."""

    def next_batch(step: int) -> dict:
        use_weak = weak is not None and step >= weak_from
        return {"f": full(step), "w": weak(step) if use_weak else None}

    return next_batch


def frozen(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def train_primary(
    data: Path,
    out: Path,
    split: SplitSpec,
    spec: ModelSpec,
    cfg: TrainConfig,
    logits: str | InMemoryLogits | None = None,
    anc_model: Path | None = None,
    self_corr: str = "none",
    alpha_start: float = 30.0,
    alpha_end: float = 0.5,
    alpha_decay_fraction: float = 0.5,
    conv_hidden: int = 128,
    conv_warmup: int | None = None,
    conv_grad_to_primary: bool = False,
    weak_weight: float = 1.0,
    weak_batch_size: int | None = None,
    pretrained: str = "none",
    val_split: str | None = "val",
    quiet: bool = False,
    skip_bad: bool = False,
    class_weights: str = "none",
    box_constraint: BoxConstraint | None = None,
    allow_full_anc: bool = False,
) -> dict:
    """Train, write RUN/model.pt, config.json, metrics.jsonl; return the val scores (or {}).

    `class_weights` (none, median-freq or a file) weights both loss terms per class;
    `box_constraint` (default on) makes the online ancillary logits box-consistent, as
    gen-logits makes the stored ones. `iters` counts the steps with W; conv's stage 2
    (`conv_warmup`, F only) comes on top. `allow_full_anc`: let conv use an ancillary net
    trained on all of F."""
    cfg.validate()
    box_constraint = BoxConstraint() if box_constraint is None else box_constraint
    box_constraint.validate()
    if self_corr not in SELF_CORR_MODES:
        raise BoxsegError(f"--self-corr {self_corr}: choose from {', '.join(SELF_CORR_MODES)}")
    check_alpha(alpha_start, alpha_end, alpha_decay_fraction)
    if weak_weight < 0:
        raise BoxsegError(f"--weak-weight {weak_weight}: must be >= 0")
    if weak_batch_size is not None and weak_batch_size < 1:
        raise BoxsegError(f"--weak-batch-size {weak_batch_size}: must be at least 1")
    if self_corr == "conv" and anc_model is None:
        raise BoxsegError("--self-corr conv needs --anc-model (g learns on F from its logits)")
    if logits is not None and anc_model is not None and self_corr != "conv":
        raise BoxsegError("give --logits or --anc-model, not both (both only with conv)")
    device = resolve_device(cfg.device)
    ds = open_dataset(data)
    full_ids, weak_ids = split_dataset(ds, split)
    weak_source = "store" if logits is not None else ("online" if anc_model else None)
    if weak_source and not weak_ids:
        raise BoxsegError("the split leaves no weak images (W is empty): lower --num-full")
    out_dir = Path(out)
    store = None
    if logits is not None:
        store = logits if isinstance(logits, InMemoryLogits) else LogitsStore.open(logits)
        left_out = set(store.attrs.get("skipped_ids") or [])
        if left_out and not skip_bad:
            raise BoxsegError(f"{logits}: gen-logits left out {len(left_out)} bad images "
                              "(--skip-bad); pass --skip-bad here too")  # fmt: skip
        weak_ids = [i for i in weak_ids if i not in left_out]  # W's masks are never opened:
        weak_ids = usable_ids(ds, split.split, weak_ids, False, skip_bad,  # images only
                              out_dir / "skipped_weak.json", "W")  # fmt: skip
        store.check_matches(list(ds.class_names), weak_ids)
        check_sizes(ds, split.split, store, weak_ids, str(logits))
        if anc_model is not None and store.attrs.get("checkpoint_sha256") != file_sha256(anc_model):
            raise BoxsegError(f"{logits}: made by another ancillary model than {anc_model}; "
                              "run gen-logits with it")  # fmt: skip
        # stores from before the constraint hold raw logits
        rule = store.attrs.get("box_constraint") or BoxConstraint(False).to_dict()
        conv_on_file = anc_model is not None and not isinstance(store, InMemoryLogits)
        if conv_on_file and rule != box_constraint.to_dict():
            raise BoxsegError(f"{logits}: made with box constraint {rule}, this run applies "
                              f"{box_constraint.to_dict()} to F's ancillary logits; pass the "
                              "same --box-constraint/--box-prior to both")  # fmt: skip
    elif anc_model is not None:  # online: W's boxes (derived from masks on segnet data)
        weak_ids = usable_ids(ds, split.split, weak_ids, ds.boxes_from_masks, skip_bad,
                              out_dir / "skipped_weak.json", "W")  # fmt: skip
    full_ids = usable_ids(ds, split.split, full_ids, True, skip_bad,
                          out_dir / "skipped_full.json", "F")  # fmt: skip
    anc = anc_meta = None
    if anc_model is not None:
        anc, anc_meta = load_model(anc_model, kind="ancillary", device=device)
        check_classes(anc_meta, ds, str(anc_model))
        if self_corr == "conv" and not allow_full_anc:
            check_anc_for_conv(anc_meta, anc_model)
        anc = frozen(anc)
    out = prepare_run_dir(out) if distributed.is_main() else Path(out)
    weights = resolve_class_weights(class_weights, ds, split.split, full_ids)
    bias = constraint_of(anc_meta, box_constraint) if anc_meta else None
    torch.manual_seed(cfg.seed)
    model = build_model(spec, ds.num_classes, None, pretrained).to(device)
    say_pretrained(model, quiet)
    aug = AugmentSpec(cfg.crop, (cfg.scale_min, cfg.scale_max))
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    box_spec = BoxSpec.from_dict(anc_meta["boxes"]) if anc_meta else BoxSpec()
    f_set = FullTrainSet(ds, split.split, full_ids, box_spec, aug, self_corr == "conv", mean,
                         std, bias)  # fmt: skip
    f_batches = Batches(f_set, cfg.batch_size, cfg.workers, cfg.seed)
    w_set, w_logits = None, None
    if weak_source == "store":
        w_set = WeakTrainSet(ds, split.split, weak_ids, logits, aug, mean, std)
        w_logits = StoredLogits(store.may_hold_void)
    elif weak_source == "online":
        w_set = OnlineWeakTrainSet(ds, split.split, weak_ids, box_spec, aug, mean, std, bias)
        w_logits = OnlineAncillary(anc)
    w_steps = total_iters(cfg, f_batches)  # steps with a W batch (all steps without W)
    warmup = 0
    if self_corr == "conv":  # stage 2 (F only) comes on top, so conv sees as many W steps
        warmup = w_steps // 3 if conv_warmup is None else conv_warmup
        if warmup < 0:
            raise BoxsegError(f"--conv-warmup {warmup}: must be >= 0")
    iters = w_steps + warmup
    nw = weak_batch_size or cfg.batch_size
    correction = make_correction(self_corr, ds.num_classes, iters, alpha_start, alpha_end,
                                 alpha_decay_fraction, conv_hidden, conv_grad_to_primary,
                                 f_anc_logits(anc, store))  # fmt: skip
    if correction.merger is not None:
        correction.merger.to(device)
    trainable = nn.ModuleDict({"primary": model})
    if correction.merger is not None:
        trainable["merger"] = correction.merger
    mode = self_corr if weak_source else "f_only"
    w_batches = None
    if w_set is not None:  # W joins at step `warmup` (0 unless conv): its stream starts there
        w_batches = Batches(w_set, nw, cfg.workers, cfg.seed + 1, offset=warmup)
    w_scale = weak_loss_scale(weak_weight, cfg.batch_size, nw)
    if distributed.is_main():
        write_config(out, "train-primary", {
            "data": ds.describe(), "split": split.to_dict(), "num_full": len(full_ids),
            "num_weak": len(weak_ids) if weak_source else 0, "weak_source": weak_source,
            "logits": logits if logits is None else str(logits),
            "anc_model": str(anc_model) if anc_model else None, "self_corr": mode,
            "anc_trained_on": anc_meta.get("trained_on") if anc_meta else None,
            "alpha": {"start": alpha_start, "end": alpha_end,
                      "decay_fraction": alpha_decay_fraction},
            "conv": {"hidden": conv_hidden, "warmup": warmup,
                     "grad_to_primary": conv_grad_to_primary},
            "weak_weight": weak_weight, "weak_batch_size": nw, "weak_loss_scale": w_scale,
            "model": spec.to_dict(), "pretrained": pretrained,
            "pretrained_loaded": model.backbone.pretrained,
            "class_weights": {"option": class_weights,
                              "values": None if weights is None else weights.tolist()},
            "box_constraint": box_constraint.to_dict() if anc_meta else None,
            "train": cfg.to_dict(), "iters": iters,
            "w_steps": (iters - warmup) if weak_source else 0, "stage2_steps": warmup,
        }, device)  # fmt: skip

    def step(nets: nn.ModuleDict, batch: dict, i: int):
        """Equation (5): CE(y, p) on F + the correction's own F loss (conv's g) + the W term
        CE(q, p), q = correction(l_anc, l) detached, weighted per image."""
        f, w = batch["f"], batch["w"]
        nf = f["image"].shape[0]
        images = f["image"] if w is None else torch.cat([f["image"], w["image"]])
        out = nets["primary"](images)
        loss_f, all_void = hard_cross_entropy(out[:nf], f["mask"], weights)
        loss_c, logs = correction.f_loss(out[:nf], f, weights)
        loss = loss_f + loss_c
        logs |= {"loss_f": loss_f.detach(), "skipped_f": all_void}
        if w is not None:
            l_anc, valid = without_void(w_logits(w), w["valid"])
            q, extra = correction.target(l_anc, out[nf:], i)
            loss_w = soft_cross_entropy(out[nf:], q, valid, weights)
            loss = loss + w_scale * loss_w
            logs |= {"loss_w": loss_w.detach()} | extra
        if correction.merger is not None:
            logs["stage"] = 2 if w is None else 3
        return loss, logs, images.shape[0]

    batches = mixed(f_batches, w_batches, warmup)
    desc = f"train-primary {mode}"
    timing = fit(trainable, step, batches, cfg, iters, device, out, desc, quiet)
    if not distributed.is_main():
        return {}
    meta = model_meta("primary", spec, ds, BoxSpec(), None, mean, std) | {"self_corr": mode}
    if correction.merger is not None:
        merger = correction.merger
        meta["merger"] = {"hidden": conv_hidden}
        meta["merger_state_dict"] = {k: v.detach().cpu() for k, v in merger.state_dict().items()}
    return finish_run(out, model, meta, ds, val_split, device, timing, iters,
                      f"train-primary ({mode})", quiet)  # fmt: skip


def weak_loss_scale(weak_weight: float, f_batch: int, w_batch: int) -> float:
    """The W term's factor. The paper sums the loss over images, (sum_F + sum_W) / n_F =
    mean_F + (n_W / n_F) mean_W; the terms are per-set means, so W's mean is scaled by W images
    per F image (1 when the batches are equal), times --weak-weight."""
    return weak_weight * w_batch / f_batch


def check_anc_for_conv(anc_meta: dict, anc_model: Path) -> None:
    """Conv's merger learns on F to correct the ancillary logits; an ancillary net trained on
    all of F is (near) right on F, so g would learn to trust it and correct nothing on W."""
    trained_on = anc_meta.get("trained_on")
    if trained_on is not None and trained_on.get("full_fraction", 1.0) < 1.0:
        return
    how = "on all of F"
    if trained_on is None:
        how += " (its model.pt does not say: made before boxseg recorded it)"
    raise BoxsegError(
        f"{anc_model}: --self-corr conv needs an ancillary net trained on part of F (the "
        f"paper's stage 1), this one was trained {how}; train one with train-anc "
        "--full-fraction 0.5, or pass --allow-full-anc"
    )


def f_anc_logits(
    anc: nn.Module | None, store: LogitsStore | InMemoryLogits | None
) -> OnlineAncillary | None:
    """Conv's source of F's ancillary logits: the net online, made like the store's when W's
    come from a store file (pooled, rounded, resampled), so g learns on the input it corrects."""
    if anc is None:
        return None
    on_file = isinstance(store, LogitsStore)
    return OnlineAncillary(anc, (store.stride, store.dtype) if on_file else None)


def make_correction(mode: str, num_classes: int, iters: int, alpha_start: float,
                    alpha_end: float, alpha_decay_fraction: float, conv_hidden: int,
                    conv_grad_to_primary: bool, f_anc: OnlineAncillary | None):  # fmt: skip
    """The self-correction piece for `mode` (selfcorr.py)."""
    if mode == "linear":
        return LinearCorrection(iters, alpha_start, alpha_end, alpha_decay_fraction)
    if mode == "conv":
        merger = ConvMerger(num_classes, conv_hidden)
        return ConvCorrection(merger, f_anc, conv_grad_to_primary)
    return NoCorrection()
