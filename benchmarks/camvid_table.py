"""The paper's table on CamVid, converged: how close do boxes get a primary net to full masks?

F = 25% of train (drawn with seed 0), or the ids of `--full-list` (e.g. whole videos), W = the
rest, with boxes derived from W's masks (the masks themselves are never read for training).
Every row is trained with each --seeds value (the training seed: initialisation, augmentation
and batch order; the split stays fixed):
- f_only: the primary net on F alone; full: on all train masks (the ceiling).
- ancillary: the ancillary net (boxes given) on val; its box-consistent W store feeds
  none / linear (stored logits) and online_linear (the net run on each crop); linear_a5 is
  linear with alpha annealed to 5 instead of 0.5 (q keeps 5/6 of the ancillary logits).
- conv: the paper's 3 stages: an ancillary net on half of F, its store, then g and the primary.
- box_fill, grabcut: primaries on the box-only rules' stores (`--self-corr none`).
- self_training: no boxes at all: the f_only net's own logits for W (`gen-logits --model
  PRIMARY`) as targets: what a semi-supervised method without boxes gets from the same images.
The F-only, fully supervised and ancillary nets see --batch-size images a step, the F + W
rows --fw-batch F and --fw-batch W images (by default 8 and 4 + 4: every row costs about the
same per step); `--iters` counts the steps of every primary (conv's stage 2, F only, comes on
top: both budgets are reported).

The protocol (scale 0.25: 90x120 images, crop 96, 1500 steps, AdamW 2e-3, resnet18 with 64
ASPP/decoder channels) was chosen to make training less of a bottleneck at a cost of about
2 h 40 min on 2 CPU cores for 3 seeds (measured, the by-video split); docs/results.md says
what was tried and what it gives.
Rows are cached in OUT/rows/*.json, so a killed run resumes; `--rows`
runs some rows only (several processes can share one OUT, one per seed or per row group), and
a run without `--rows` prints the table from whatever is cached.

    python benchmarks/camvid_table.py ../shared/data/camvid --out camvid-table --json table.json
    grep -v ^0016E5 ../shared/data/camvid/train.txt | head -92 > seqF.txt   # F and W by video
    python benchmarks/camvid_table.py ../shared/data/camvid --out camvid-seq --full-list seqF.txt
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
import torch

from boxseg.data.boxes import BoxSpec
from boxseg.data.formats import open_dataset
from boxseg.data.split import SplitSpec, split_dataset
from boxseg.engine import TrainConfig
from boxseg.evaluate import evaluate_store
from boxseg.gen_logits import BoxMethod, gen_logits
from boxseg.io import read_image, read_label_png, write_image, write_json, write_label_png
from boxseg.models import ModelSpec
from boxseg.train_anc import train_anc
from boxseg.train_primary import train_primary

ROWS = ("f_only", "ancillary", "anc_half", "none", "linear", "linear_a5", "conv", "online_linear",
        "box_fill", "grabcut", "self_training", "full")  # fmt: skip
STAGES = ("box_stores", "stores")  # --rows may name these too: the W stores alone
BOX_ROWS = ("none", "linear", "linear_a5", "conv", "online_linear", "box_fill", "grabcut")


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


def scores(r: dict) -> dict:
    return {"miou": r["miou"], "pixel_acc": r["pixel_acc"], "per_class_iou": r["per_class_iou"]}


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def report(results: dict[str, dict], seeds: list[int]) -> dict:
    """Mean, sample standard deviation and per-seed values of each row; per-class means; the
    claims of docs/results.md."""
    table = {}
    for name in ROWS:
        runs = {s: results[f"{name}_s{s}"] for s in seeds if f"{name}_s{s}" in results}
        if not runs:
            continue
        m, sd = mean_sd([r["miou"] for r in runs.values()])
        classes = list(next(iter(runs.values()))["per_class_iou"])
        per_class = {}
        for c in classes:  # None where a class is absent from the eval split
            values = [r["per_class_iou"][c] for r in runs.values()]
            per_class[c] = statistics.mean(values) if None not in values else None
        first = next(iter(runs.values()))
        seconds = statistics.mean(r["seconds"] for r in runs.values())
        table[name] = {"miou_mean": m, "miou_sd": sd,
                       "miou_seeds": {s: r["miou"] for s, r in runs.items()},
                       "per_class_iou": per_class, "w_steps": first.get("w_steps"),
                       "steps": first.get("steps"), "seconds_mean": seconds}  # fmt: skip
    claims = {}
    if {"f_only", "full"} <= table.keys():
        lo, hi = table["f_only"]["miou_mean"], table["full"]["miou_mean"]
        claims["full_minus_f_only"] = hi - lo
        semi = [k for k in BOX_ROWS + ("self_training",) if k in table]
        if semi and hi > lo:
            best = max(semi, key=lambda k: table[k]["miou_mean"])
            claims["best_semi_row"] = best
            claims["gap_closed_by_best_semi"] = (table[best]["miou_mean"] - lo) / (hi - lo)
        box = [k for k in BOX_ROWS if k in table]
        if box and "self_training" in table:
            best_box = max(box, key=lambda k: table[k]["miou_mean"])
            st = table["self_training"]
            claims["best_box_row"] = best_box
            claims["best_box_minus_self_training"] = table[best_box]["miou_mean"] - st["miou_mean"]
            claims["spread_of_the_two"] = max(table[best_box]["miou_sd"], st["miou_sd"])
    if {"linear", "none"} <= table.keys():
        claims["linear_minus_none"] = table["linear"]["miou_mean"] - table["none"]["miou_mean"]
    claims["max_row_sd"] = max((r["miou_sd"] for r in table.values()), default=None)
    return {"table": table, "claims": claims}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path, help="CamVid root (segnet layout)")
    ap.add_argument("--out", type=Path, default=Path("camvid-table"))
    ap.add_argument("--json", type=Path)
    ap.add_argument("--eval-split", default="val")
    ap.add_argument("--train-split", default="train")
    ap.add_argument("--full-fraction", type=float, default=0.25)
    ap.add_argument("--full-list", type=Path,
                    help="F = the train ids in this file (e.g. whole video sequences) instead "
                    "of a random --full-fraction")  # fmt: skip
    ap.add_argument("--scale", type=float, default=0.25)
    ap.add_argument("--iters", type=int, default=1500, help="steps of every primary row")
    ap.add_argument("--anc-iters", type=int, default=1500, help="steps of the ancillary nets")
    ap.add_argument(
        "--batch-size",
        type=int,
        default=8,
        help="images a step of the F-only, fully supervised and ancillary rows",
    )
    ap.add_argument("--fw-batch", type=int, default=4,
                    help="F + W rows: this many F and this many W images a step")  # fmt: skip
    ap.add_argument("--crop", type=int, default=96)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--channels", type=int, default=64, help="ASPP and decoder channels")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--rows", help=f"run only these rows (comma-separated: {', '.join(ROWS)})")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--threads", type=int, help="torch CPU threads (several processes)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    wanted = set(args.rows.split(",")) if args.rows else set(ROWS)
    if wanted - set(ROWS + STAGES):
        raise SystemExit(f"--rows: unknown {sorted(wanted - set(ROWS + STAGES))}; "
                         f"choose from {ROWS + STAGES}")  # fmt: skip
    out = args.out
    (out / "rows").mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    data = resized_copy(args.data, out / "data", [args.train_split, args.eval_split], args.scale)
    ds = open_dataset(data)
    n_train = len(ds.ids(args.train_split))
    split = SplitSpec(args.train_split, round(args.full_fraction * n_train), 0)
    if args.full_list:
        split = SplitSpec(args.train_split, None, 0, args.full_list.resolve())
    num_full = len(split_dataset(ds, split)[0])
    spec = ModelSpec("resnet18", 16, args.channels, args.channels)
    box_spec = BoxSpec(min_area=4)  # 16 pixels at scale 0.5, as the ablation
    val, runs, stores = args.eval_split, out / "runs", out / "stores"

    def cfg(seed: int, iters: int) -> TrainConfig:
        return TrainConfig(iters=iters, batch_size=args.batch_size, crop=args.crop,
                           scale_min=0.75, scale_max=1.25, lr=args.lr, optimizer="adamw",
                           seed=seed, device=args.device, workers=args.workers,
                           checkpoint_every=250, resume=True)  # fmt: skip

    def row(name: str, fn) -> dict:
        return cached_row(out / "rows", name, fn,
                          lambda r: f"mIoU {r.get('miou', float('nan')):.2f}")  # fmt: skip

    def store_row(name: str, model: Path | None, method: str = "anc") -> dict:
        """Make a W store (once) and score its pseudo-labels against W's held-back masks."""
        path = stores / f"{name}.zarr"

        def make() -> dict:
            box = None if method == "anc" else BoxMethod(method, box_min_area=box_spec.min_area)
            gen_logits(data, model, str(path), split, 4, args.device, quiet=True,
                       box_method=box, workers=args.workers or None)  # fmt: skip
            quality = evaluate_store(ds, args.train_split, str(path), quiet=True)
            return scores(quality) | {"coverage": quality["coverage"]}

        return row(f"store_{name}", make) | {"path": str(path)}

    def anc_row(name: str, seed: int, fraction: float) -> Path:
        run = runs / name
        row(name, lambda: scores(train_anc(
            data, run, split, box_spec, spec, cfg(seed, args.anc_iters), val_split=val,
            quiet=True, full_fraction=fraction)) | {"steps": args.anc_iters})  # fmt: skip
        return run / "model.pt"

    def primary(name: str, seed: int, full: bool = False, **kw) -> Path:
        run = runs / name
        sp = SplitSpec(args.train_split, n_train, 0) if full else split
        c = cfg(seed, args.iters)
        if "logits" in kw or "anc_model" in kw:  # F + W rows: fw-batch F and fw-batch W images
            c = dataclasses.replace(c, batch_size=args.fw_batch)

        def fit() -> dict:
            r = train_primary(data, run, sp, spec, c, val_split=val, quiet=True, **kw)
            config = json.loads((run / "config.json").read_text())
            return scores(r) | {"steps": config["iters"], "w_steps": config["w_steps"]}

        row(name, fit)
        return run / "model.pt"

    def seed_rows(s: int) -> None:
        """The wanted rows of seed s, each building (or finding cached) what it needs."""
        f_only = lambda: primary(f"f_only_s{s}", s)  # noqa: E731
        anc = lambda: anc_row(f"ancillary_s{s}", s, 1.0)  # noqa: E731
        half = lambda: anc_row(f"anc_half_s{s}", s, 0.5)  # noqa: E731
        w_anc = lambda: store_row(f"anc_s{s}", anc())["path"]  # noqa: E731
        w_half = lambda: store_row(f"anc_half_s{s}", half())["path"]  # noqa: E731
        w_self = lambda: store_row(f"self_s{s}", f_only())["path"]  # noqa: E731
        w_rule = lambda rule: store_row(rule, None, rule)["path"]  # noqa: E731
        jobs = {
            "f_only": f_only,
            "full": lambda: primary(f"full_s{s}", s, full=True),
            "ancillary": anc,
            "anc_half": half,
            "box_stores": lambda: (w_rule("box"), w_rule("grabcut")),
            "stores": lambda: (w_anc(), w_half(), w_self()),
            "none": lambda: primary(f"none_s{s}", s, logits=w_anc(), self_corr="none"),
            "linear": lambda: primary(f"linear_s{s}", s, logits=w_anc(), self_corr="linear"),
            "linear_a5": lambda: primary(
                f"linear_a5_s{s}", s, logits=w_anc(), self_corr="linear", alpha_end=5.0
            ),  # fmt: skip
            "online_linear": lambda: primary(
                f"online_linear_s{s}", s, anc_model=anc(), self_corr="linear"
            ),  # fmt: skip
            "conv": lambda: primary(
                f"conv_s{s}", s, logits=w_half(), anc_model=half(), self_corr="conv"
            ),  # fmt: skip
            "box_fill": lambda: primary(f"box_fill_s{s}", s, logits=w_rule("box")),
            "grabcut": lambda: primary(f"grabcut_s{s}", s, logits=w_rule("grabcut")),
            "self_training": lambda: primary(f"self_training_s{s}", s, logits=w_self()),
        }
        for name, job in jobs.items():
            if name in wanted:
                job()

    for s in seeds:
        seed_rows(s)
    if args.rows:
        return
    results = {p.stem: json.loads(p.read_text()) for p in (out / "rows").glob("*.json")}
    summary = report(results, seeds)
    print(f"\nCamVid {val} at scale {args.scale}, F = {num_full} / W = "
          f"{n_train - num_full}, {args.iters} steps, seeds {seeds}")  # fmt: skip
    print(f"{'row':<14} {'mIoU':>6} {'sd':>5}  seeds")
    for name, r in summary["table"].items():
        per_seed = ", ".join(f"{v:.2f}" for v in r["miou_seeds"].values())
        print(f"{name:<14} {r['miou_mean']:6.2f} {r['miou_sd']:5.2f}  {per_seed}")
    pseudo = {k[len("store_") :]: v["miou"] for k, v in results.items() if k.startswith("store_")}
    print("W pseudo-labels (mIoU vs held-back masks):",
          ", ".join(f"{k} {v:.2f}" for k, v in sorted(pseudo.items())))  # fmt: skip
    print("claims:", json.dumps(summary["claims"]))
    if args.json:
        write_json(args.json, summary | {
            "pseudo_labels": pseudo, "rows": results,
            "seconds_this_run": time.perf_counter() - t_all,
            "seconds_all_rows": sum(r["seconds"] for r in results.values()),
            "args": {k: str(v) for k, v in vars(args).items()},
            "num_full": num_full, "num_weak": n_train - num_full})  # fmt: skip


if __name__ == "__main__":
    main()
