"""`boxseg eval`: confusion-matrix mIoU of a model, or of a folder of predicted PNGs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import track
from rich.table import Table

from boxseg.box_constraint import BoxConstraint, rule_of
from boxseg.checkpoint import load_model
from boxseg.data.boxes import BoxSpec
from boxseg.data.formats import SegDataset, load_full, open_dataset
from boxseg.data.sample import VOID
from boxseg.data.split import SplitSpec, split_dataset
from boxseg.engine import resolve_device
from boxseg.errors import BoxsegError
from boxseg.inference import predict_on_device
from boxseg.io import read_label_png, write_json, write_label_png
from boxseg.metrics import class_map, confusion_counts, confusion_matrix, scores
from boxseg.outputs import is_boxseg_json, output_dir, output_file
from boxseg.store import LogitsStore


def check_classes(meta: dict, ds: SegDataset, source: str) -> None:
    if tuple(meta["class_names"]) != ds.class_names:
        raise BoxsegError(
            f"{source}: the model's classes ({', '.join(meta['class_names'])}) differ from the "
            f"dataset's ({', '.join(ds.class_names)})"
        )


@dataclass(frozen=True)
class TestTime:
    """How a model is run on each whole image it is scored on: at the image `scales`, also
    mirrored (`flip`), in overlapping tiles of `window` pixels (0: whole), and an ancillary
    model's output made box-consistent by `constraint` (box_constraint.py)."""

    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    window: int = 0
    constraint: BoxConstraint = field(default_factory=BoxConstraint)

    def validate(self) -> None:
        """One-line errors for values that cannot work."""
        if self.window < 0 or 0 < self.window < 16:
            raise BoxsegError(f"--window {self.window}: 0 (whole images) or at least 16 pixels")
        self.constraint.validate()


def evaluate_model(
    model: torch.nn.Module,
    meta: dict,
    ds: SegDataset,
    split: str,
    device: torch.device,
    quiet: bool = False,
    test_time: TestTime = TestTime(),
    save_pred: Path | None = None,
    ids: list[str] | None = None,
) -> dict:
    """Scores of a model on a split (or the images `ids` of it), whole images, run as
    `test_time` says; an ancillary model gets boxes from the masks. `save_pred`: also write
    <id>.png predictions. The logits, their argmax and the confusion matrix stay on `device`:
    K x K counts come to the host once, at the end (and each prediction with `save_pred`)."""
    box_spec = BoxSpec.from_dict(meta.get("boxes") or {})
    test_time.validate()
    rule = rule_of(meta, test_time.constraint)
    scales, flip, window = test_time.scales, test_time.flip, test_time.window
    conf = torch.zeros((ds.num_classes, ds.num_classes), dtype=torch.int64, device=device)
    model.eval()
    chosen = ds.ids(split) if ids is None else ids
    for image_id in track(chosen, description=f"eval {split}", disable=quiet):
        s = load_full(ds, split, image_id, box_spec, with_boxes=meta["kind"] == "ancillary")
        logits = predict_on_device(
            model, meta, s.image, device, s.boxes, s.labels, scales, flip, window, rule
        )
        pred = class_map(logits)
        if save_pred is not None:
            out = pred.cpu().numpy().astype(np.uint8)
            write_label_png(Path(save_pred) / f"{image_id}.png", out)
        conf += confusion_counts(pred, torch.from_numpy(s.mask), ds.num_classes)
    return scores(conf.cpu().numpy(), list(ds.class_names))


def evaluate_pred_dir(ds: SegDataset, split: str, pred_dir: Path) -> dict:
    """Scores of `<id>.png` class-index predictions in `pred_dir` (no model needed)."""
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise BoxsegError(f"{pred_dir}: prediction directory not found")
    conf = np.zeros((ds.num_classes, ds.num_classes), np.int64)
    for image_id in ds.ids(split):
        path = pred_dir / f"{image_id}.png"
        pred = read_label_png(path)
        mask = ds.read_mask(split, image_id)
        if pred.shape != mask.shape:
            raise BoxsegError(
                f"{path}: prediction is {pred.shape[1]}x{pred.shape[0]}, "
                f"the mask is {mask.shape[1]}x{mask.shape[0]}"
            )
        if pred.max() >= ds.num_classes:
            raise BoxsegError(f"{path}: class id {int(pred.max())} out of range")
        conf += confusion_matrix(torch.from_numpy(pred), torch.from_numpy(mask), ds.num_classes)
    return scores(conf, list(ds.class_names))


def pseudo_labels(store: LogitsStore, i: int) -> np.ndarray:
    """Image i's pseudo-label (H x W uint8 class indices, VOID where the store is void): the
    argmax of its logits decoded and made box-consistent at pixel level, as the primary's W
    targets see them."""
    logits = store.read_full(i)
    pred = class_map(logits.nan_to_num(float("-inf"))).to(torch.uint8)
    pred[torch.isnan(logits).any(0)] = VOID
    return pred.numpy()


def evaluate_store(
    ds: SegDataset,
    split: str,
    location: str,
    quiet: bool = False,
    save_pred: Path | None = None,
    weak_ids: list[str] | None = None,
    only: list[str] | None = None,
) -> dict:
    """Scores of a logits store's pseudo-labels (`pseudo_labels`: what W gets) against the
    masks of its images in `split`: of those that have one (a user checking pseudo-labels
    masks a few W images; `images_without_mask` counts the rest). Void pseudo-label pixels
    count as misses; `coverage` is the share of labelled ground-truth pixels that got a
    pseudo-label. `save_pred`: also write every store image's pseudo-label as
    <id>.png (class indices, 255 void), masked or not. `weak_ids`: the W of the split options
    given, which the store must hold exactly. `only`: just these of its images (a ranking's
    first: `boxseg rank`)."""
    store = LogitsStore.open(location)
    if list(store.class_names) != list(ds.class_names):
        raise BoxsegError(f"{location}: the store's classes differ from the dataset's")
    if weak_ids is not None:
        store.check_matches(list(ds.class_names), weak_ids)
    chosen = list(range(len(store)))
    if only is not None:
        unknown = [i for i in only if i not in store.image_ids]
        if unknown:
            raise BoxsegError(
                f"{location}: no logits for '{unknown[0]}' of the ranking (a "
                "ranking of another store?)"
            )
        chosen = sorted(store.index(i) for i in only)
    missing = [
        store.image_ids[i] for i in chosen if not ds.image_path(split, store.image_ids[i]).is_file()
    ]
    if missing:
        raise BoxsegError(
            f"{location}: {len(missing)} of its images are not in split '{split}' "
            f"(first: {missing[0]}); pass the --split it was made from"
        )
    # (in the folder layout W images may have no mask; elsewhere every image has one)
    masked = [i for i in chosen if ds.has_mask(split, store.image_ids[i])]
    if save_pred is not None:
        for i in track(chosen, description="pseudo-labels", disable=quiet):
            write_label_png(Path(save_pred) / f"{store.image_ids[i]}.png", pseudo_labels(store, i))
    if not masked and save_pred is not None:
        return {
            "method": store.attrs.get("method", "anc"),
            "images_scored": 0,
            "images_without_mask": len(chosen),
            "saved": len(chosen),
        }
    if not masked:
        raise BoxsegError(
            f"{location}: none of its {len(chosen)} images has a mask in split '{split}'; "
            "mask a few of them (masks/<id>.png) to score the pseudo-labels"
        )
    k = ds.num_classes
    conf = np.zeros((k + 1, k + 1), np.int64)
    for i in track(masked, description="eval store", disable=quiet):
        pred = torch.from_numpy(pseudo_labels(store, i)).long()
        pred[pred == VOID] = k  # void pseudo-label
        mask = ds.read_mask(split, store.image_ids[i])
        conf += confusion_matrix(pred, torch.from_numpy(mask), k + 1)
    result = scores(conf[:k, :k], list(ds.class_names), unlabelled=conf[:k, k])
    labelled = conf[:k].sum()
    result["coverage"] = float(conf[:k, :k].sum() / labelled * 100) if labelled else 0.0
    result["method"] = store.attrs.get("method", "anc")
    result["images_scored"], result["images_without_mask"] = len(masked), len(chosen) - len(masked)
    if result["images_without_mask"] and not quiet:
        print(
            f"eval: scored the {len(masked)} store images that have a mask; the other "
            f"{result['images_without_mask']} have none"
        )
    return result


def print_scores(result: dict, title: str, console: Console | None = None) -> None:
    table = Table(title=title)
    table.add_column("class")
    table.add_column("IoU %", justify="right")
    for name, v in result["per_class_iou"].items():
        table.add_row(name, "-" if v is None else f"{v:.2f}")
    table.add_row("[bold]mIoU", f"[bold]{result['miou']:.2f}")
    table.add_row("pixel acc", f"{result['pixel_acc']:.2f}")
    if "coverage" in result:
        table.add_row("coverage", f"{result['coverage']:.2f}")
    (console or Console()).print(table)


@dataclass(frozen=True)
class EvalOptions:
    """Everything `boxseg eval` is asked: the data and the split scored; what is scored,
    exactly one of a model.pt (`model_path`, run as `test_time` says, on `device`), a folder
    of <id>.png predictions (`pred_dir`) or a logits store's pseudo-labels (`logits`); where
    the scores (`json_out`) and the predictions (`save_pred`) go; `weak_of`: only the W
    images of that F/W split (the split options the other stages were given); `only`: with
    `logits`, just these images (a ranking's first)."""

    data: Path
    split: str = "val"
    model_path: Path | None = None
    pred_dir: Path | None = None
    logits: str | None = None
    json_out: Path | None = None
    save_pred: Path | None = None
    test_time: TestTime = field(default_factory=TestTime)
    device: str = "auto"
    weak_of: SplitSpec | None = None
    only: tuple[str, ...] | None = None

    def validate(self) -> None:
        """One-line errors for option values and combinations that cannot work."""
        if sum(x is not None for x in (self.model_path, self.pred_dir, self.logits)) != 1:
            raise BoxsegError("give exactly one of --model, --pred-dir or --logits")
        self.test_time.validate()


def run_eval(opts: EvalOptions, quiet: bool = False) -> dict:
    """The CLI stage: score a model, a prediction folder or a logits store; print a table,
    write JSON."""
    opts.validate()
    data, split, save_pred, json_out = opts.data, opts.split, opts.save_pred, opts.json_out
    model_path, pred_dir, logits, only = opts.model_path, opts.pred_dir, opts.logits, opts.only
    ds = open_dataset(data)
    if save_pred is not None:
        output_dir(save_pred, "eval --save-pred", [Path(data), pred_dir], option="--save-pred")
    if json_out is not None:
        output_file(json_out, "--json", is_boxseg_json("miou"), [Path(data)])
    weak_ids = None if opts.weak_of is None else split_dataset(ds, opts.weak_of)[1]
    if logits is not None:
        result = evaluate_store(ds, split, logits, quiet, save_pred, weak_ids, only)
        if "miou" not in result:  # nothing to score: the pseudo-labels were the point
            if not quiet:
                print(
                    f"eval: wrote {result['saved']} pseudo-labels to {save_pred}; none of "
                    "the store's images has a mask to score them with"
                )
            return result
        title = f"pseudo-labels of {logits} ({result['method']}) on {split}"
    elif pred_dir is not None:
        result = evaluate_pred_dir(ds, split, pred_dir)
        title = f"{pred_dir} on {split}"
    else:
        dev = resolve_device(opts.device)
        model, meta = load_model(model_path, device=dev)
        check_classes(meta, ds, str(model_path))
        how = opts.test_time
        result = evaluate_model(model, meta, ds, split, dev, quiet, how, save_pred, weak_ids)
        title = f"{meta['kind']} model {model_path} on {split}"
    if weak_ids is not None:
        title += f" (its {len(weak_ids)} W images)"
    if only is not None:
        title += f" (the ranking's first {len(only)})"
    result["model"] = str(model_path or pred_dir or logits)
    result["split"] = split + (" (W)" if weak_ids is not None else "")
    if not quiet:
        print_scores(result, title)
    if json_out is not None:
        write_json(json_out, result)
    return result
