"""The paper's table on CamVid: how close do boxes get a primary net to full masks, on W's own
footage and on footage no set has seen?

CamVid's train and val hold three drives: 0001TP (62 train frames), 0006R0 (101) and 0016E5
(204 train frames; the 101 val frames are one clip of it, between W frames). With
`--unseen-video 0006R0` (the default) that drive's frames form the `unseen` split, used only
for evaluation; F and W come from the other two drives' train frames (`seen`). Every row is
scored twice: on val (in-domain: the footage W came from) and on `unseen` (a drive in neither
F nor W). They answer different questions: "boxes on my deployment footage" and "boxes on
other footage". `--unseen-video ''` gives the older protocol (train split, val only).

F = 25% of the seen frames (drawn with seed 0), or the ids of `--full-list`, W = the rest,
with boxes derived from W's masks (the masks themselves are never read for training). Every
row is trained with each --seeds value (the training seed: initialisation, augmentation and
batch order; the split stays fixed):
- f_only: the primary net on F alone; full: on all seen masks (the ceiling).
- ancillary: the ancillary net (boxes given); its box-consistent W store (stride 4) feeds
  none / linear (stored logits) and online_linear (the net run on each crop); linear_a5 is
  linear with alpha annealed to 5 instead of 0.5 (q keeps 5/6 of the ancillary logits).
- conv: the paper's 3 stages: an ancillary net on half of F, its store, then g and the primary.
- box_fill, grabcut: primaries on the box-only rules' stores, stored at pixel level (stride 1,
  exact: like is compared with like), `--self-corr none`.
- anc_weakbox: the ancillary net trained with W's boxes as supervision too (`train-anc
  --weak-boxes`, box_losses.py), and its W store; none_weakbox: `--self-corr none` from it.
  (Stage anc_stride1: the ancillary net's store at stride 1, beside the default 4.)
- recipe (a stage): the ancillary defaults, chosen on ancillary_ablation.py's split, checked
  here one at a time: anc_nearest (the paper's box path: nearest-resized boxes, no direct
  path), anc_unweighted (no class weights), and the default net's store without the box
  constraint and with smaller-box priors 1, 2, 4; each W store is scored against W's masks
  (`store_summary` groups the seeds; `--report` prints it).
- self_training: no boxes at all: the f_only net's own logits for W (`gen-logits --model
  PRIMARY`) as targets: what a semi-supervised method without boxes gets from the same images.
The F-only, fully supervised and ancillary nets see --batch-size images a step, the F + W
rows --fw-batch F and --fw-batch W images (by default 8 and 4 + 4: every row costs about the
same per step); `--iters` counts the steps of every primary (conv's stage 2, F only, comes on
top: both budgets are reported).

The protocol: scale 0.25 (90x120 images), crop 96, 1500 steps, AdamW 2e-3, resnet18 with 64
ASPP/decoder channels; docs/results.md says what was tried and what it gives. Primary rows
train without class weights and over every pixel (`--primary-class-weights median-freq`:
SegNet's balancing, for the thin classes; `--primary-hard-pixels 0.2`: the loss over the
hardest fifth of the pixels; `peer_ceiling.py`: smp's DeepLabV3+ as a second ceiling).
Rows are cached in OUT/rows/*.json (each with the commit and torch version it ran at), so a
killed run resumes. Without `--rows` every row of every seed is trained (or found in the cache)
and the table printed; `--rows` trains only those rows (several processes can share one OUT,
one per seed or per row group); `--report` only prints the table from the cache.

    python benchmarks/camvid_table.py ../shared/data/camvid --out camvid-table --json table.json
    python benchmarks/camvid_table.py ../shared/data/camvid --out camvid-table --report
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shutil
import statistics
import time
from pathlib import Path

import cv2
import torch

from boxseg.box_constraint import BoxConstraint
from boxseg.box_losses import WeakBoxLoss
from boxseg.checkpoint import load_model
from boxseg.data.boxes import BoxSpec
from boxseg.data.formats import open_dataset
from boxseg.data.split import SplitSpec, split_dataset
from boxseg.engine import TrainConfig, resolve_device
from boxseg.evaluate import evaluate_model, evaluate_store
from boxseg.gen_logits import BoxMethod, GenLogitsOptions, gen_logits
from boxseg.io import read_image, read_label_png, write_image, write_json, write_label_png
from boxseg.models import BoxPathSpec, ModelSpec
from boxseg.primary_options import CorrectionOptions, LossOptions, PrimaryOptions, WeakOptions
from boxseg.run_dir import code_version
from boxseg.train_anc import AncOptions, train_anc
from boxseg.train_primary import train_primary

ROWS = ("f_only", "ancillary", "anc_half", "none", "linear", "linear_a5", "conv", "online_linear",
        "box_fill", "grabcut", "self_training", "full", "anc_weakbox", "none_weakbox",
        "anc_nearest", "anc_unweighted")  # fmt: skip
STAGES = ("box_stores", "stores", "anc_stride1", "recipe")  # --rows may name these: W stores
PRIORS = (1.0, 2.0, 4.0)  # the smaller-box priors the recipe stage scores
CODE = code_version()  # the code this process runs (taken once: a later commit is not it)
BOX_ROWS = (
    "none",
    "linear",
    "linear_a5",
    "conv",
    "online_linear",
    "box_fill",
    "grabcut",
    "none_weakbox",
)


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


def footage_split(data: Path, train_split: str, video: str) -> tuple[str, str]:
    """Put the `train_split` frames of `video` (an id prefix) into an `unseen` split and the
    others into `seen` (segnet layout: <split>.txt, <split>/, <split>annot/, copied inside
    this benchmark's own copy of the data); returns ("seen", "unseen"). No F or W image then
    comes from that drive."""
    ids = (data / f"{train_split}.txt").read_text().split()
    for name, keep in (("seen", False), ("unseen", True)):
        chosen = [i for i in ids if i.startswith(video) == keep]
        if not chosen:
            raise SystemExit(f"--unseen-video {video}: {'no' if keep else 'only'} frames of it "
                             f"in {train_split}")  # fmt: skip
        if (data / f"{name}.txt").is_file():
            continue
        for sub in ("", "annot"):
            (data / f"{name}{sub}").mkdir(exist_ok=True)
            for i in chosen:
                shutil.copy(data / f"{train_split}{sub}" / f"{i}.png",
                            data / f"{name}{sub}" / f"{i}.png")  # fmt: skip
        (data / f"{name}.txt").write_text("".join(f"{i}\n" for i in chosen))
    return "seen", "unseen"


def cached_row(rows: Path, name: str, fn, summary=lambda r: "") -> dict:
    """Run one row unless ROWS/NAME.json holds its result, so a killed benchmark resumes; a
    new row records the commit, torch version and CPU threads it ran at (on the CPU another
    thread count sums floats in another order: the same seed then trains other weights)."""
    path = rows / f"{name}.json"
    if path.is_file():
        return json.loads(path.read_text())
    print(f"== {name}", flush=True)
    t = time.perf_counter()
    result = fn() | {"seconds": time.perf_counter() - t, "commit": CODE,
                     "torch": torch.__version__, "threads": torch.get_num_threads()}  # fmt: skip
    write_json(path, result)
    print(f"   {name}: {summary(result)} ({result['seconds']:.0f} s)", flush=True)
    return result


def same_network(out: Path, spec: ModelSpec) -> None:
    """Rows are cached by name: refuse an OUT whose rows another network made (OUT/model.json
    records it; a folder of rows from before it was written holds boxseg's own net's)."""
    record = out / "model.json"
    if record.is_file():
        old = ModelSpec(**json.loads(record.read_text()))
        if old != spec:
            theirs, mine = old.describe(), spec.describe()
            if theirs == mine:  # one name, other widths: name the widths that differ
                differ = [k for k, v in spec.to_dict().items() if getattr(old, k) != v]
                theirs += f" ({', '.join(f'{k} {getattr(old, k)}' for k in differ)})"
                mine += f" ({', '.join(f'{k} {getattr(spec, k)}' for k in differ)})"
            raise SystemExit(f"{out}: its rows were made by {theirs}; give {mine} its own --out")
    elif spec.arch != "boxseg" and any((out / "rows").glob("*.json")):
        raise SystemExit(
            f"{out}: its rows are boxseg's own net's; give {spec.describe()} its own --out"
        )
    else:
        write_json(record, spec.to_dict())


def scores(r: dict) -> dict:
    return {"miou": r["miou"], "pixel_acc": r["pixel_acc"], "per_class_iou": r["per_class_iou"]}


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _summary(runs: dict[int, dict], key: str | None) -> dict | None:
    """Mean, sd, per-seed values and per-class means of one evaluation of a row's runs (key
    None: the in-domain scores at the top of each row; "unseen": the unseen-footage ones)."""
    got = {s: (r if key is None else r.get(key)) for s, r in runs.items()}
    if any(v is None for v in got.values()):
        return None
    m, sd = mean_sd([v["miou"] for v in got.values()])
    per_class = {}
    for c in next(iter(got.values()))["per_class_iou"]:  # None where a class is absent
        values = [v["per_class_iou"][c] for v in got.values()]
        per_class[c] = statistics.mean(values) if None not in values else None
    return {"miou_mean": m, "miou_sd": sd, "miou_seeds": {s: v["miou"] for s, v in got.items()},
            "per_class_iou": per_class}  # fmt: skip


def _claims(table: dict, key: str) -> dict:
    """The gap from F only to full supervision, and how much of it the best row closes."""
    claims: dict = {}
    rows = {k: v[key] for k, v in table.items() if v.get(key)}
    if {"f_only", "full"} <= rows.keys():
        lo, hi = rows["f_only"]["miou_mean"], rows["full"]["miou_mean"]
        claims["full_minus_f_only"] = hi - lo
        semi = [k for k in BOX_ROWS + ("self_training",) if k in rows]
        if semi and hi > lo:
            best = max(semi, key=lambda k: rows[k]["miou_mean"])
            claims["best_semi_row"] = best
            claims["gap_closed_by_best_semi"] = (rows[best]["miou_mean"] - lo) / (hi - lo)
            claims["best_semi_minus_f_only"] = rows[best]["miou_mean"] - lo
            claims["spread_of_the_two"] = max(rows[best]["miou_sd"], rows["f_only"]["miou_sd"])
    box = [k for k in BOX_ROWS if k in rows]
    if box and "self_training" in rows:
        best_box = max(box, key=lambda k: rows[k]["miou_mean"])
        claims["best_box_row"] = best_box
        claims["best_box_minus_self_training"] = (
            rows[best_box]["miou_mean"] - rows["self_training"]["miou_mean"]
        )
    if {"linear", "none"} <= rows.keys():
        claims["linear_minus_none"] = rows["linear"]["miou_mean"] - rows["none"]["miou_mean"]
    claims["max_row_sd"] = max((r["miou_sd"] for r in rows.values()), default=None)
    return claims


def report(results: dict[str, dict], seeds: list[int]) -> dict:
    """Per row: the in-domain evaluation ("in_domain") and the unseen-footage one ("unseen"),
    each with mean, sample standard deviation, per-seed values and per-class means; the
    claims of docs/results.md for each."""
    table = {}
    for name in ROWS:
        runs = {s: results[f"{name}_s{s}"] for s in seeds if f"{name}_s{s}" in results}
        if not runs:
            continue
        first = next(iter(runs.values()))
        table[name] = {
            "in_domain": _summary(runs, None),
            "unseen": _summary(runs, "unseen"),
            "w_steps": first.get("w_steps"),
            "steps": first.get("steps"),
            "commits": sorted({r.get("commit", "?") for r in runs.values()}),
            "seconds_mean": statistics.mean(r["seconds"] for r in runs.values()),
        }
    return {"table": table, "claims": {"in_domain": _claims(table, "in_domain"),
                                       "unseen": _claims(table, "unseen")}}  # fmt: skip


def store_summary(results: dict[str, dict], seeds: list[int]) -> dict:
    """W pseudo-label mIoU per kind of store (a store row's name without its seed: anc,
    anc_stride1, anc_nearest, ...): mean, sd and per-seed values over `seeds`, and for a net's
    store the per-seed difference to the default store (`anc`) of the same seed, so a recipe
    change is judged paired, against the spread."""
    kinds: dict[str, dict] = {}
    for key, r in results.items():
        if not key.startswith("store_"):
            continue
        name = key[len("store_") :]
        m = re.search(r"_s(\d+)(?=_|$)", name)  # a rule's store (box, grabcut) has no seed
        kind = name if m is None else name[: m.start()] + name[m.end() :]
        seed = None if m is None else int(m[1])
        if seed is None or seed in seeds:
            kinds.setdefault(kind, {})[seed] = r["miou"]
    out = {}
    for kind, by_seed in sorted(kinds.items()):
        m, sd = mean_sd(list(by_seed.values()))
        out[kind] = {"miou_mean": m, "miou_sd": sd, "miou_seeds": by_seed}
        base = kinds.get("anc", {})
        paired = {s: v - base[s] for s, v in by_seed.items() if s is not None and s in base}
        if kind != "anc" and paired:
            out[kind]["minus_anc"] = paired
    return out


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
    ap.add_argument(
        "--arch",
        default="boxseg",
        help="boxseg (its own DeepLabv3+) or an smp architecture (its own --out)",
    )
    ap.add_argument("--encoder", default="resnet18")
    ap.add_argument("--primary-class-weights", default="none",
                    help="class weights of every primary row (none, median-freq: for thin "
                    "classes; give it its own --out: rows keep their names)")  # fmt: skip
    ap.add_argument("--primary-hard-pixels", type=float, default=1.0,
                    help="every primary row averages its loss over this fraction of hardest "
                    "pixels (OHEM-style; its own --out, as --primary-class-weights)")  # fmt: skip
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--rows", help=f"run only these rows (comma-separated: {', '.join(ROWS)})")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--threads", type=int, help="torch CPU threads (several processes)")
    ap.add_argument(
        "--unseen-video",
        default="0006R0",
        help="frames of this drive are only evaluated ('': none held out)",
    )
    ap.add_argument("--report", action="store_true", help="only print the table from the cache")
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
    train_split, unseen = args.train_split, None
    if args.unseen_video:
        train_split, unseen = footage_split(data, args.train_split, args.unseen_video)
    ds = open_dataset(data)
    n_train = len(ds.ids(train_split))
    split = SplitSpec(train_split, round(args.full_fraction * n_train), 0)
    if args.full_list:
        split = SplitSpec(train_split, None, 0, args.full_list.resolve())
    num_full = len(split_dataset(ds, split)[0])
    spec = ModelSpec(args.encoder, 16, args.channels, args.channels, arch=args.arch)
    same_network(out, spec)
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

    def on_unseen(run: Path) -> dict:
        """The scores of RUN/model.pt on the unseen drive (none without --unseen-video)."""
        if unseen is None:
            return {}
        model, meta = load_model(run / "model.pt", device=resolve_device(args.device))
        r = evaluate_model(model, meta, ds, unseen, resolve_device(args.device), quiet=True)
        return {"unseen": scores(r)}

    def store_row(
        name: str,
        model: Path | None,
        method: str = "anc",
        stride: int = 4,
        constraint: BoxConstraint | None = None,
    ) -> dict:
        """Make a W store (once) and score its pseudo-labels against W's held-back masks; the
        box rules' stores at pixel level (stride 1: exact), the nets' at `stride`."""
        path = stores / f"{name}.zarr"

        def make() -> dict:
            box = None if method == "anc" else BoxMethod(method, box_min_area=box_spec.min_area)
            opts = GenLogitsOptions(
                data,
                str(path),
                split,
                model,
                box_method=box,
                stride=stride if box is None else 1,
                constraint=BoxConstraint() if constraint is None else constraint,
                workers=args.workers or None,
                device=args.device,
            )
            gen_logits(opts, quiet=True)
            quality = evaluate_store(ds, train_split, str(path), quiet=True)
            return scores(quality) | {"coverage": quality["coverage"]}

        return row(f"store_{name}", make) | {"path": str(path)}

    def anc_row(name: str, seed: int, fraction: float, weak_boxes: bool = False, **variant) -> Path:
        """An ancillary net (`variant`: AncOptions fields such as class_weights or box_path,
        else their defaults), scored with boxes given on val and on the unseen drive."""
        run = runs / name
        opts = AncOptions(
            data,
            run,
            split,
            spec,
            cfg(seed, args.anc_iters),
            box_spec,
            full_fraction=fraction,
            weak_boxes=WeakBoxLoss(weak_boxes),
            val_split=val,
        )
        opts = dataclasses.replace(opts, **variant)

        def fit() -> dict:
            return scores(train_anc(opts, quiet=True)) | {"steps": args.anc_iters} | on_unseen(run)

        row(name, fit)
        return run / "model.pt"

    def primary(name: str, seed: int, full: bool = False, **changes) -> Path:
        """A primary net's row; `changes`: PrimaryOptions fields (weak, correction) on top of
        the table's settings."""
        run = runs / name
        sp = SplitSpec(train_split, n_train, 0) if full else split
        c = cfg(seed, args.iters)
        losses = LossOptions(args.primary_class_weights, args.primary_hard_pixels)
        opts = PrimaryOptions(data, run, sp, spec, c, losses=losses, val_split=val)
        opts = dataclasses.replace(opts, **changes)
        if opts.weak.given:  # F + W rows: fw-batch F and fw-batch W images
            opts = dataclasses.replace(opts, train=dataclasses.replace(c, batch_size=args.fw_batch))

        def fit() -> dict:
            r = train_primary(opts, quiet=True)
            config = json.loads((run / "config.json").read_text())
            return (
                scores(r)
                | {"steps": config["iters"], "w_steps": config["w_steps"]}
                | (on_unseen(run))
            )

        row(name, fit)
        return run / "model.pt"

    linear, conv = CorrectionOptions("linear"), CorrectionOptions("conv")
    linear_a5 = CorrectionOptions("linear", alpha_end=5.0)

    def from_store(path: str) -> WeakOptions:
        """W's targets read from the store at `path`."""
        return WeakOptions(logits=path)

    def seed_rows(s: int) -> None:
        """The wanted rows of seed s, each building (or finding cached) what it needs."""
        f_only = lambda: primary(f"f_only_s{s}", s)  # noqa: E731
        anc = lambda: anc_row(f"ancillary_s{s}", s, 1.0)  # noqa: E731
        half = lambda: anc_row(f"anc_half_s{s}", s, 0.5)  # noqa: E731
        w_anc = lambda: store_row(f"anc_s{s}", anc())["path"]  # noqa: E731
        anc_wb = lambda: anc_row(f"anc_weakbox_s{s}", s, 1.0, True)  # noqa: E731
        w_anc_wb = lambda: store_row(f"anc_weakbox_s{s}", anc_wb())["path"]  # noqa: E731
        w_half = lambda: store_row(f"anc_half_s{s}", half())["path"]  # noqa: E731
        w_self = lambda: store_row(f"self_s{s}", f_only())["path"]  # noqa: E731
        w_rule = lambda rule: store_row(rule, None, rule)["path"]  # noqa: E731

        w_nearest = lambda: store_row(f"anc_nearest_s{s}", anc_row(  # noqa: E731
            f"anc_nearest_s{s}", s, 1.0, box_path=BoxPathSpec.legacy()))  # fmt: skip
        w_unweighted = lambda: store_row(f"anc_unweighted_s{s}", anc_row(  # noqa: E731
            f"anc_unweighted_s{s}", s, 1.0, class_weights="none"))  # fmt: skip

        def recipe() -> None:
            w_anc()  # the default store, each change is paired with
            store_row(f"anc_s{s}_noconstraint", anc(), constraint=BoxConstraint(False))
            for p in PRIORS:
                store_row(f"anc_s{s}_prior{p:g}", anc(), constraint=BoxConstraint(True, p))
            w_nearest()
            w_unweighted()

        jobs = {
            "f_only": f_only,
            "full": lambda: primary(f"full_s{s}", s, full=True),
            "ancillary": anc,
            "anc_half": half,
            "box_stores": lambda: (w_rule("box"), w_rule("grabcut")),
            "stores": lambda: (w_anc(), w_half(), w_self()),
            "anc_stride1": lambda: store_row(f"anc_s{s}_stride1", anc(), stride=1),
            "recipe": recipe,
            "anc_nearest": w_nearest,
            "anc_unweighted": w_unweighted,
            "anc_weakbox": w_anc_wb,
            "none_weakbox": lambda: primary(f"none_weakbox_s{s}", s, weak=from_store(w_anc_wb())),
            "none": lambda: primary(f"none_s{s}", s, weak=from_store(w_anc())),
            "linear": lambda: primary(
                f"linear_s{s}", s, weak=from_store(w_anc()), correction=linear
            ),
            "linear_a5": lambda: primary(
                f"linear_a5_s{s}", s, weak=from_store(w_anc()), correction=linear_a5
            ),
            "online_linear": lambda: primary(
                f"online_linear_s{s}", s, weak=WeakOptions(anc_model=anc()), correction=linear
            ),
            "conv": lambda: primary(
                f"conv_s{s}", s, weak=WeakOptions(w_half(), half()), correction=conv
            ),
            "box_fill": lambda: primary(f"box_fill_s{s}", s, weak=from_store(w_rule("box"))),
            "grabcut": lambda: primary(f"grabcut_s{s}", s, weak=from_store(w_rule("grabcut"))),
            "self_training": lambda: primary(f"self_training_s{s}", s, weak=from_store(w_self())),
        }
        for name, job in jobs.items():
            if name in wanted:
                job()

    if not args.report:
        for s in seeds:
            seed_rows(s)
    if args.rows:
        return
    results = {p.stem: json.loads(p.read_text()) for p in (out / "rows").glob("*.json")}
    summary = report(results, seeds)
    where = f"in-domain = {val} (W's footage)" + (
        f", unseen = drive {args.unseen_video} ({len(ds.ids(unseen))} frames, in neither F nor "
        "W)" if unseen else "")  # fmt: skip
    steps = next((r["steps"] for r in summary["table"].values() if r.get("steps")), args.iters)
    print(f"\nCamVid at scale {args.scale}, F = {num_full} / W = {n_train - num_full} of "
          f"{train_split}, {steps} steps, seeds {seeds}; {where}")  # fmt: skip
    print(f"{'row':<14} {'in-domain':>15} {'unseen':>15}  commits")
    for name, r in summary["table"].items():
        cells = [f"{e['miou_mean']:6.2f} +- {e['miou_sd']:4.2f}" if e else f"{'-':>15}"
                 for e in (r["in_domain"], r["unseen"])]  # fmt: skip
        print(f"{name:<14} {cells[0]:>15} {cells[1]:>15}  {', '.join(r['commits'])}")
    pseudo = store_summary(results, seeds)
    print("W pseudo-labels (mIoU vs held-back masks; paired: minus the default store, per seed):")
    for kind, p in pseudo.items():
        paired = ", ".join(f"{d:+.2f}" for d in p.get("minus_anc", {}).values())
        print(f"  {kind:<22} {p['miou_mean']:6.2f} +- {p['miou_sd']:4.2f}"
              f"{'  paired ' + paired if paired else ''}")  # fmt: skip
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
