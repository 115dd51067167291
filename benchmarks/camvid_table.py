"""The paper's table on CamVid: every pipeline mode on the same backbone, resolution and budget.

F = 25% of train (fixed seed), W = the rest with boxes derived from its masks. Rows:
F-only, ancillary (boxes given; trained once, for --anc-iters steps, its own budget, with
today's defaults: class weights, box-consistent stores), none / linear / conv
self-correction (conv with its stage-1 ancillary net on half of F), fully supervised (all
train masks), and the box-only baselines box-fill and GrabCut (primary with `--self-corr
none` on their stores). The F + W rows see
--batch-size F and --batch-size W images a step; F-only and fully supervised run both at
--batch-size and at twice it (`_2x`: as many images a step as the F + W rows, all with
masks). The rows that decide the claims run with every --seeds value. Also scores each W
store's pseudo-labels against W's held-back masks, and records the store sizes.

To fit about an hour on 2 CPU cores, images are first resized by --scale (0.5: 180x240, with
INTER_AREA for images and nearest for masks) into a work folder, and every row is scored on the
same resized --eval-split. Rows are cached in OUT/rows/*.json, so a killed run resumes.

    python benchmarks/camvid_table.py ../shared/data/camvid --out camvid-table --json table.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import time
from pathlib import Path

import cv2

from boxseg.data.boxes import BoxSpec
from boxseg.data.formats import open_dataset
from boxseg.data.split import SplitSpec
from boxseg.engine import TrainConfig
from boxseg.evaluate import evaluate_store
from boxseg.gen_logits import BoxMethod, gen_logits
from boxseg.io import read_image, read_label_png, write_image, write_json, write_label_png
from boxseg.models import ModelSpec
from boxseg.train_anc import train_anc
from boxseg.train_primary import train_primary

ANC_ITERS = 4800  # where the ancillary net's W pseudo-labels stop improving (the ablation)
SEEDED_ROWS = ("f_only", "none", "linear", "conv", "full", "f_only_2x", "full_2x")


def resized_copy(src: Path, dst: Path, splits: list[str], scale: float) -> Path:
    """The dataset at `scale` (images INTER_AREA, masks nearest), same layout; reused if done."""
    if (dst / "DONE").is_file():
        return dst
    ds = open_dataset(src)
    for split in splits:
        (dst / split).mkdir(parents=True, exist_ok=True)
        (dst / f"{split}annot").mkdir(parents=True, exist_ok=True)
        for image_id in ds.ids(split):
            image = read_image(ds.image_path(split, image_id))
            h, w = image.shape[:2]
            size = (round(w * scale), round(h * scale))
            write_image(dst / split / f"{image_id}.png",
                        cv2.resize(image, size, interpolation=cv2.INTER_AREA))  # fmt: skip
            mask = read_label_png(ds.mask_path(split, image_id))
            write_label_png(dst / f"{split}annot" / f"{image_id}.png",
                            cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST))  # fmt: skip
        shutil.copy(src / f"{split}.txt", dst / f"{split}.txt")
    for extra in ("classes.txt",):
        if (src / extra).is_file():
            shutil.copy(src / extra, dst / extra)
    (dst / "DONE").write_text("")
    return dst


def cached_row(rows: Path, name: str, fn, summary=lambda r: "") -> dict:
    """Run one row unless ROWS/NAME.json holds its result, so a killed benchmark resumes."""
    path = rows / f"{name}.json"
    if path.is_file():
        return json.loads(path.read_text())
    print(f"== {name}", flush=True)
    t = time.perf_counter()
    result = fn() | {"seconds": time.perf_counter() - t}
    write_json(path, result)
    print(f"   {name}: {summary(result)} ({result['seconds']:.0f} s)", flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path, help="CamVid root (segnet layout)")
    ap.add_argument("--out", type=Path, default=Path("camvid-table"))
    ap.add_argument("--json", type=Path)
    ap.add_argument("--eval-split", default="val")
    ap.add_argument("--train-split", default="train")
    ap.add_argument("--full-fraction", type=float, default=0.25)
    ap.add_argument("--scale", type=float, default=0.5)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--anc-iters", type=int, default=ANC_ITERS,
                    help="ancillary nets' steps: trained once, so trained until their "
                    "pseudo-labels stop improving (docs/results.md, the ablation)")  # fmt: skip
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--crop", type=int, default=160)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--channels", type=int, default=64, help="ASPP and decoder channels")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    out = args.out
    (out / "rows").mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    data = resized_copy(args.data, out / "data", [args.train_split, args.eval_split], args.scale)
    ds = open_dataset(data)
    n_train = len(ds.ids(args.train_split))
    split = SplitSpec(args.train_split, round(args.full_fraction * n_train), 0)
    spec = ModelSpec("resnet18", 16, args.channels, args.channels)
    box_spec = BoxSpec(min_area=16)
    val = args.eval_split

    def cfg(seed: int) -> TrainConfig:
        return TrainConfig(iters=args.iters, batch_size=args.batch_size, crop=args.crop,
                           scale_min=0.75, scale_max=1.25, lr=args.lr, optimizer="adamw",
                           seed=seed, device=args.device, checkpoint_every=50,
                           resume=True)  # fmt: skip

    def row(name: str, fn) -> dict:
        return cached_row(out / "rows", name, fn,
                          lambda r: f"mIoU {r.get('miou', float('nan')):.2f}")  # fmt: skip

    def scores(r: dict) -> dict:
        return {"miou": r["miou"], "pixel_acc": r["pixel_acc"], "per_class_iou": r["per_class_iou"]}

    runs = out / "runs"
    results: dict[str, dict] = {}
    anc = dataclasses.replace(cfg(0), iters=args.anc_iters, checkpoint_every=200)
    results["ancillary"] = row("ancillary", lambda: scores(train_anc(
        data, runs / "anc", split, box_spec, spec, anc, val_split=val, quiet=True)))  # fmt: skip
    results["ancillary_half"] = row("ancillary_half", lambda: scores(train_anc(
        data, runs / "anc_half", split, box_spec, spec, anc, val_split=val, quiet=True,
        full_fraction=0.5)))  # fmt: skip
    anc, anc_half = runs / "anc" / "model.pt", runs / "anc_half" / "model.pt"
    stores = {
        "anc": out / "w_anc.zarr",
        "box": out / "w_box.zarr",
        "grabcut": out / "w_grabcut.zarr",
    }

    def make_store(method: str) -> dict:
        box = None if method == "anc" else BoxMethod(method, box_min_area=box_spec.min_area)
        # batch 1: the W stores of docs/results.md were made one image per forward pass
        gen_logits(data, anc if method == "anc" else None, str(stores[method]), split, 4,
                   args.device, quiet=True, box_method=box, batch_size=1)  # fmt: skip
        size = sum(p.stat().st_size for p in stores[method].rglob("*") if p.is_file())
        quality = evaluate_store(ds, args.train_split, str(stores[method]), quiet=True)
        return scores(quality) | {"coverage": quality["coverage"], "store_bytes": size}

    pseudo = {m: row(f"store_{m}", lambda m=m: make_store(m)) for m in stores}

    def primary(name: str, seed: int, **kw) -> dict:
        full, batch = kw.pop("full", False), kw.pop("batch", args.batch_size)
        sp = SplitSpec(args.train_split, n_train, 0) if full else split
        c = dataclasses.replace(cfg(seed), batch_size=batch)
        r = train_primary(data, runs / f"{name}_s{seed}", sp, spec, c, val_split=val,
                          quiet=True, **kw)  # fmt: skip
        return scores(r)

    modes = {
        "f_only": {},
        "none": {"logits": str(stores["anc"]), "self_corr": "none"},
        "linear": {"logits": str(stores["anc"]), "self_corr": "linear"},
        "conv": {"anc_model": anc_half, "self_corr": "conv"},
        "full": {"full": True},
        "box_fill": {"logits": str(stores["box"]), "self_corr": "none"},
        "grabcut": {"logits": str(stores["grabcut"]), "self_corr": "none"},
        # the F + W rows see batch F + batch W images a step; these see as many, all from masks
        "f_only_2x": {"batch": 2 * args.batch_size},
        "full_2x": {"full": True, "batch": 2 * args.batch_size},
        # attempts at the gap: W's loss at half weight; self-correction on box-fill's targets
        "linear_w05": {"logits": str(stores["anc"]), "self_corr": "linear", "weak_weight": 0.5},
        "linear_box": {"logits": str(stores["box"]), "self_corr": "linear"},
    }
    for name, kw in modes.items():
        for seed in seeds if name in SEEDED_ROWS else seeds[:1]:
            key = f"{name}_s{seed}"
            results[key] = row(key, lambda n=name, s=seed, k=kw: primary(n, s, **dict(k)))

    table = []
    for name in ("f_only", "f_only_2x", "ancillary", "none", "linear", "conv", "box_fill",
                 "grabcut", "linear_w05", "linear_box", "full", "full_2x"):  # fmt: skip
        per_seed = {
            k: v["miou"] for k, v in results.items() if k == name or k.startswith(f"{name}_s")
        }
        table.append({"row": name, "miou_mean": statistics.mean(per_seed.values()),
                      "miou_seeds": per_seed})  # fmt: skip
    by = {r["row"]: r["miou_mean"] for r in table}
    semi = ("none", "linear", "conv", "box_fill", "grabcut", "linear_w05", "linear_box")
    best_semi = max(by[k] for k in semi)
    gap = by["full"] - by["f_only"]
    gap_2x = by["full_2x"] - by["f_only_2x"]
    claims = {
        "ancillary_minus_f_only": by["ancillary"] - by["f_only"],
        "ancillary_minus_f_only_2x": by["ancillary"] - by["f_only_2x"],
        "linear_minus_none": by["linear"] - by["none"],
        "gap_closed_by_best_semi": (best_semi - by["f_only"]) / gap if gap > 0 else None,
        "gap_closed_by_best_semi_2x": (best_semi - by["f_only_2x"]) / gap_2x
        if gap_2x > 0
        else None,
    }
    print(
        f"\nCamVid {val} at scale {args.scale}, F = {split.num_full} / W = "
        f"{n_train - split.num_full}, {args.iters} steps, seeds {seeds}"
    )
    print(f"{'row':<12} {'mIoU mean':>9}  seeds")
    for r in table:
        seeds_txt = ", ".join(f"{v:.2f}" for v in r["miou_seeds"].values())
        print(f"{r['row']:<12} {r['miou_mean']:9.2f}  {seeds_txt}")
    print("pseudo-labels on W (mIoU vs held-back masks, coverage, store MB):")
    for m, p in pseudo.items():
        print(f"  {m:<8} {p['miou']:6.2f} {p['coverage']:6.1f}% {p['store_bytes'] / 1e6:7.1f}")
    print("claims:", json.dumps(claims))
    summary = {"table": table, "claims": claims, "pseudo_labels": pseudo, "rows": results,
               "seconds_total": time.perf_counter() - t_all,
               "args": {k: str(v) for k, v in vars(args).items()},
               "num_full": split.num_full, "num_weak": n_train - split.num_full}  # fmt: skip
    if args.json:
        write_json(args.json, summary)


if __name__ == "__main__":
    main()
