"""The paper's setting on real images: objects in boxes, background around them (issue 13).

Makes a folder-layout dataset (docs/formats.md) from CamVid at 180x240: classes background,
car, pedestrian, bicyclist (every other CamVid class becomes background, void stays void),
masks for every image, and a COCO `boxes.json` with one box per 8-connected component of each
object class of at least 16 pixels, as a labelling tool would export them. Here the box
constraint alone cannot help much (background is allowed inside boxes): the net must find the
object inside its box. F = 92 train images drawn with seed 0, W = the other 275.

Scores on W (pseudo-labels against W's held-back masks) and on val (the ancillary net with
boxes): box-fill and GrabCut (stored at pixel level, stride 1: exact, like with like), and
ancillary nets with and without the constraint; with `--weak-boxes on` (or `off,on`) also
ancillary nets trained with W's boxes as supervision too (`train-anc --weak-boxes`: BoxInst's
projection and colour-pairwise terms, box_losses.py), with their cost per step against the
plain net's of the same seed. Cached in OUT/rows/*.json (each with
the commit it ran at); with several seeds, each row's mean and sd over them and its lead over
box-fill are printed too.

    python benchmarks/camvid_objects.py ../shared/data/camvid --out camvid-objects \\
        --weak-boxes off,on --json camvid_objects.json
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from camvid_table import cached_row, mean_sd, resized_copy  # noqa: E402

from boxseg.box_constraint import BoxConstraint  # noqa: E402
from boxseg.box_losses import WeakBoxLoss  # noqa: E402
from boxseg.checkpoint import load_model  # noqa: E402
from boxseg.data.boxes import BoxSpec, boxes_from_mask  # noqa: E402
from boxseg.data.formats import open_dataset  # noqa: E402
from boxseg.data.split import SplitSpec  # noqa: E402
from boxseg.engine import TrainConfig  # noqa: E402
from boxseg.evaluate import TestTime, evaluate_model, evaluate_store  # noqa: E402
from boxseg.gen_logits import BoxMethod, GenLogitsOptions, gen_logits  # noqa: E402
from boxseg.io import read_image, read_label_png, write_image, write_json, write_label_png  # noqa: E402
from boxseg.models import ModelSpec  # noqa: E402
from boxseg.train_anc import AncOptions, train_anc  # noqa: E402

OBJECTS = {"car": 8, "pedestrian": 9, "bicyclist": 10}  # CamVid class ids
CAMVID_VOID = 11


def objects_dataset(segnet: Path, dst: Path, splits: list[str], min_area: int = 16) -> Path:
    """The folder-layout object dataset made from a segnet-layout CamVid copy; reused if done."""
    if (dst / "DONE").is_file():
        return dst
    (dst / "images").mkdir(parents=True, exist_ok=True)
    (dst / "masks").mkdir(parents=True, exist_ok=True)
    names = ["background", *OBJECTS]
    (dst / "classes.txt").write_text("".join(f"{n}\n" for n in names))
    src = open_dataset(segnet)
    images, annotations = [], []
    for split in splits:
        ids = src.ids(split)
        for image_id in ids:
            image = read_image(src.image_path(split, image_id))
            raw = read_label_png(src.mask_path(split, image_id))
            mask = np.zeros_like(raw)
            mask[raw == CAMVID_VOID] = 255
            for k, camvid_id in enumerate(OBJECTS.values(), 1):
                mask[raw == camvid_id] = k
            write_image(dst / "images" / f"{image_id}.png", image)
            write_label_png(dst / "masks" / f"{image_id}.png", mask)
            image_index = len(images) + 1
            h, w = mask.shape
            images.append({"id": image_index, "file_name": f"{image_id}.png", "height": h,
                           "width": w})  # fmt: skip
            boxes, labels = boxes_from_mask(mask, len(names), min_area, background=0)
            for (x1, y1, x2, y2), label in zip(boxes.tolist(), labels.tolist(), strict=True):
                annotations.append({"id": len(annotations) + 1, "image_id": image_index,
                                    "category_id": int(label),
                                    "bbox": [x1, y1, x2 - x1, y2 - y1]})  # fmt: skip
        (dst / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    categories = [{"id": k, "name": n} for k, n in enumerate(names) if k]
    doc = {"images": images, "annotations": annotations, "categories": categories}
    (dst / "boxes.json").write_text(json.dumps(doc))
    (dst / "DONE").write_text("")
    return dst


def step_seconds(run: Path) -> float:
    """A run's median seconds per training step, from its logged images/s and the images a
    step draws (F's batch, plus W's with --weak-boxes)."""
    config = json.loads((run / "config.json").read_text())
    images = config["train"]["batch_size"] + (config["weak_boxes"]["batch_size"] or 0)
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().split("\n") if x]
    return float(np.median([images / r["img_per_s"] for r in records if r.get("img_per_s")]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path, help="CamVid root (segnet layout)")
    ap.add_argument("--out", type=Path, default=Path("camvid-objects"))
    ap.add_argument("--json", type=Path)
    ap.add_argument("--iters", type=int, default=1200, help="ancillary training steps")
    ap.add_argument("--box-prior", type=float, default=0.0)
    ap.add_argument("--baselines", default="box,grabcut")
    ap.add_argument("--seeds", default="0,1,2", help="ancillary nets' training seeds")
    ap.add_argument("--weak-boxes", default="off", help="off, on, or off,on: ancillary variants")
    ap.add_argument("--weak-box-weight", type=float, default=1.0)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    out = args.out
    (out / "rows").mkdir(parents=True, exist_ok=True)
    half = resized_copy(args.data, out / "camvid_half", ["train", "val"], 0.5)
    data = objects_dataset(half, out / "data", ["train", "val"])
    ds = open_dataset(data)
    split = SplitSpec("train", round(0.25 * len(ds.ids("train"))), 0)
    spec = ModelSpec("resnet18", 16, 64, 64)

    def cached(name: str, fn) -> dict:
        return cached_row(out / "rows", name, fn, lambda r: f"W {r['w_miou']:.2f}")

    def store_scores(store: Path) -> dict:
        w = evaluate_store(ds, "train", str(store), quiet=True)
        return {"w_miou": w["miou"], "w_per_class_iou": w["per_class_iou"]}

    results = {}
    for method in [m for m in args.baselines.split(",") if m]:

        def baseline(method=method) -> dict:
            store = out / "stores" / f"{method}.zarr"
            boxes = BoxMethod(method, box_min_area=16)
            opts = GenLogitsOptions(
                data,
                str(store),
                split,
                box_method=boxes,
                stride=1,
                device=args.device,
                overwrite=True,
            )
            gen_logits(opts, quiet=True)
            return store_scores(store)

        results[method] = cached(method, baseline)

    variants = [v for v in args.weak_boxes.split(",") if v]
    if not set(variants) <= {"off", "on"}:
        raise SystemExit(f"--weak-boxes {args.weak_boxes}: off, on or off,on")
    for seed in (int(x) for x in args.seeds.split(",")):
        for variant in variants:
            wb = variant == "on"
            tag = "_wb" if wb else ""
            if wb and args.weak_box_weight != 1:
                tag += f"{args.weak_box_weight:g}"
            run = out / f"anc{tag}_s{seed}"
            cfg = TrainConfig(iters=args.iters, batch_size=4, crop=160, scale_min=0.75,
                              scale_max=1.25, lr=1e-3, optimizer="adamw", seed=seed,
                              device=args.device, checkpoint_every=200, resume=True)  # fmt: skip
            if not (run / "model.pt").is_file():
                opts = AncOptions(
                    data,
                    run,
                    split,
                    spec,
                    cfg,
                    BoxSpec(16),
                    class_weights="median-freq",
                    weak_boxes=WeakBoxLoss(wb, args.weak_box_weight),
                    val_split=None,
                )
                train_anc(opts, quiet=True)
            prior = f"_prior{args.box_prior:g}" if args.box_prior else ""
            rules = {f"anc{tag}_constraint{prior}_s{seed}": BoxConstraint(True, args.box_prior)}
            if not wb:
                rules = {f"anc_raw_s{seed}": BoxConstraint(False)} | rules
            for name, rule in rules.items():

                def anc(rule=rule, name=name, run=run) -> dict:
                    store = out / "stores" / f"{name}.zarr"
                    anc_model = run / "model.pt"
                    opts = GenLogitsOptions(
                        data,
                        str(store),
                        split,
                        anc_model,
                        constraint=rule,
                        device=args.device,
                        overwrite=True,
                    )
                    gen_logits(opts, quiet=True)
                    model, meta = load_model(anc_model)
                    how = TestTime(constraint=rule)
                    val = evaluate_model(model, meta, ds, "val", torch.device("cpu"), True, how)
                    scores = {"val_miou": val["miou"], "val_per_class_iou": val["per_class_iou"],
                              "train_seconds_per_step": step_seconds(run)}
                    return store_scores(store) | scores

                results[name] = cached(name, anc)
    print(f"\n{'row':<24} {'W mIoU':>7} {'val':>6} {'s/step':>6}  per-class IoU on W")
    for name, r in results.items():
        per = ", ".join(f"{k} {'-' if v is None else f'{v:.1f}'}"
                        for k, v in r["w_per_class_iou"].items())  # fmt: skip
        print(f"{name:<24} {r['w_miou']:7.2f} {r.get('val_miou', float('nan')):6.2f} "
              f"{r.get('train_seconds_per_step', float('nan')):6.3f}  {per}")
    summary = over_seeds(results)
    if any(len(r["seeds"]) > 1 for r in summary.values()):
        print(f"\n{'over seeds':<24} {'W mIoU':>15} {'- box-fill':>10} {'val':>15}  "
              "per-class IoU on W")
        box = results.get("box", {}).get("w_miou")
        for name, r in summary.items():
            w, v = r["w_miou"], r["val_miou"]
            lead = f"{w['mean'] - box:+10.2f}" if box is not None else f"{'':>10}"
            per = ", ".join(f"{k} {x:.1f}" for k, x in r["w_per_class_iou"].items())
            print(f"{name:<24} {w['mean']:7.2f} +- {w['sd']:4.2f} {lead} "
                  f"{v['mean']:7.2f} +- {v['sd']:4.2f}  {per}  (seeds {r['seeds']})")
    if args.json:
        write_json(args.json, {"rows": results, "over_seeds": summary, "iters": args.iters,
                               "box_prior": args.box_prior,
                               "num_full": split.num_full})  # fmt: skip


def over_seeds(results: dict) -> dict:
    """Rows NAME_s{seed} grouped by NAME: mean and sd (n - 1) of W and val mIoU over the seeds
    present, and the mean per-class W IoU."""
    groups: dict[str, dict[int, dict]] = {}
    for name, r in results.items():
        m = re.fullmatch(r"(.+)_s(\d+)", name)
        if m and "val_miou" in r:
            groups.setdefault(m[1], {})[int(m[2])] = r
    summary = {}
    for name, by_seed in groups.items():
        rows = [by_seed[s] for s in sorted(by_seed)]
        w, v = mean_sd([r["w_miou"] for r in rows]), mean_sd([r["val_miou"] for r in rows])
        per = {k: float(np.mean([r["w_per_class_iou"][k] or 0.0 for r in rows]))
               for k in rows[0]["w_per_class_iou"]}  # fmt: skip
        summary[name] = {"seeds": sorted(by_seed), "w_per_class_iou": per,
                         "w_miou": {"mean": w[0], "sd": w[1]},
                         "val_miou": {"mean": v[0], "sd": v[1]}}  # fmt: skip
    return summary


if __name__ == "__main__":
    main()
