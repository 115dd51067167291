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
from boxseg.models import ModelSpec, build_model
from boxseg.run_dir import finish_run, model_meta, prepare_run_dir, write_config
from boxseg.selfcorr import (
    SELF_CORR_MODES,
    ConvMerger,
    alpha_at,
    hard_cross_entropy,
    soft_cross_entropy,
    soft_target,
)
from boxseg.store import InMemoryLogits, LogitsStore


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
) -> dict:
    """Train, write RUN/model.pt, config.json, metrics.jsonl; return the val scores (or {}).

    `class_weights` (none, median-freq or a file) weights both loss terms per class;
    `box_constraint` (default on) makes the online ancillary logits box-consistent, as
    gen-logits makes the stored ones."""
    cfg.validate()
    box_constraint = BoxConstraint() if box_constraint is None else box_constraint
    box_constraint.validate()
    if self_corr not in SELF_CORR_MODES:
        raise BoxsegError(f"--self-corr {self_corr}: choose from {', '.join(SELF_CORR_MODES)}")
    check_alpha(alpha_start, alpha_end, alpha_decay_fraction)
    if weak_weight < 0:
        raise BoxsegError(f"--weak-weight {weak_weight}: must be >= 0")
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
        anc = frozen(anc)
    out = prepare_run_dir(out) if distributed.is_main() else Path(out)
    weights = resolve_class_weights(class_weights, ds, split.split, full_ids)
    bias = constraint_of(anc_meta, box_constraint) if anc_meta else None
    torch.manual_seed(cfg.seed)
    model = build_model(spec, ds.num_classes, None, pretrained).to(device)
    merger = ConvMerger(ds.num_classes, conv_hidden).to(device) if self_corr == "conv" else None
    trainable = nn.ModuleDict({"primary": model, **({"merger": merger} if merger else {})})
    aug = AugmentSpec(cfg.crop, (cfg.scale_min, cfg.scale_max))
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    box_spec = BoxSpec.from_dict(anc_meta["boxes"]) if anc_meta else BoxSpec()
    f_set = FullTrainSet(ds, split.split, full_ids, box_spec, aug, merger is not None, mean, std,
                         bias)  # fmt: skip
    f_batches = Batches(f_set, cfg.batch_size, cfg.workers, cfg.seed)
    w_set = None
    if weak_source == "store":
        w_set = WeakTrainSet(ds, split.split, weak_ids, logits, aug, mean, std)
    elif weak_source == "online":
        w_set = OnlineWeakTrainSet(ds, split.split, weak_ids, box_spec, aug, mean, std, bias)
    iters = total_iters(cfg, f_batches)
    warmup = 0
    if merger is not None:
        warmup = iters // 3 if conv_warmup is None else conv_warmup
        if not 0 <= warmup < iters:
            raise BoxsegError(f"--conv-warmup {warmup}: must be in 0..{iters - 1} (iters {iters})")
    mode = self_corr if weak_source else "f_only"
    w_batches = None
    if w_set is not None:  # W joins at step `warmup` (0 unless conv): its stream starts there
        w_batches = Batches(w_set, weak_batch_size or cfg.batch_size, cfg.workers, cfg.seed + 1,
                            offset=warmup)  # fmt: skip
    if distributed.is_main():
        write_config(out, "train-primary", {
            "data": ds.describe(), "split": split.to_dict(), "num_full": len(full_ids),
            "num_weak": len(weak_ids) if weak_source else 0, "weak_source": weak_source,
            "logits": logits if logits is None else str(logits),
            "anc_model": str(anc_model) if anc_model else None, "self_corr": mode,
            "alpha": {"start": alpha_start, "end": alpha_end,
                      "decay_fraction": alpha_decay_fraction},
            "conv": {"hidden": conv_hidden, "warmup": warmup,
                     "grad_to_primary": conv_grad_to_primary},
            "weak_weight": weak_weight, "model": spec.to_dict(), "pretrained": pretrained,
            "class_weights": {"option": class_weights,
                              "values": None if weights is None else weights.tolist()},
            "box_constraint": box_constraint.to_dict() if anc_meta else None,
            "train": cfg.to_dict(), "iters": iters,
        }, device)  # fmt: skip

    def anc_logits_of(b: dict) -> torch.Tensor:
        if "logits" in b:
            return b["logits"]
        with torch.no_grad():
            out = anc(b["image"], b["boxes"]).float()
            return out + b["bias"] if "bias" in b else out

    def step(nets: nn.ModuleDict, batch: dict, i: int):
        model, merger = nets["primary"], nets["merger"] if "merger" in nets else None
        f, w = batch["f"], batch["w"]
        nf = f["image"].shape[0]
        images = f["image"] if w is None else torch.cat([f["image"], w["image"]])
        out_all = model(images)
        out_f = out_all[:nf]
        loss, all_void = hard_cross_entropy(out_f, f["mask"], weights)
        logs = {"loss_f": loss.item(), "skipped_f": all_void}
        if merger is not None:  # stages 2 and 3: g learns on F, CE(y, q_conv)
            g_in = out_f if conv_grad_to_primary else out_f.detach()
            loss_g, _ = hard_cross_entropy(merger(g_in.float(), anc_logits_of(f)), f["mask"],
                                           weights)  # fmt: skip
            loss = loss + loss_g
            logs |= {"loss_g": loss_g.item(), "stage": 2 if w is None else 3}
        if w is not None:
            out_w = out_all[nf:]
            alpha = alpha_at(i, iters, alpha_start, alpha_end, alpha_decay_fraction)
            q = soft_target(anc_logits_of(w), out_w, self_corr, alpha, merger)
            loss_w = soft_cross_entropy(out_w, q, w["valid"], weights)
            loss = loss + weak_weight * loss_w
            logs |= {"loss_w": loss_w.item()} | ({"alpha": alpha} if self_corr == "linear" else {})
        return loss, logs, images.shape[0]

    batches = mixed(f_batches, w_batches, warmup)
    desc = f"train-primary {mode}"
    timing = fit(trainable, step, batches, cfg, iters, device, out, desc, quiet)
    if not distributed.is_main():
        return {}
    meta = model_meta("primary", spec, ds, BoxSpec(), None, mean, std) | {"self_corr": mode}
    if merger is not None:
        meta["merger"] = {"hidden": conv_hidden}
        meta["merger_state_dict"] = {k: v.detach().cpu() for k, v in merger.state_dict().items()}
    return finish_run(out, model, meta, ds, val_split, device, timing, iters,
                      f"train-primary ({mode})", quiet)  # fmt: skip
