"""Boxes as people draw them (issue 38): what loose, shifted and missing W boxes cost each way of
making W's targets, on CamVid and on the objects set.

Each dataset is first written in the folder layout (docs/formats.md) with a COCO `boxes.json`
holding one exact box per 8-connected component of each class, as a labelling tool exports
them; then, per noise setting and draw, a copy whose W boxes are made imprecise by
`boxseg.data.box_noise.noisy_boxes` (F's boxes and the evaluation splits' stay exact: F is what
the user masked). The pipeline then reads the boxes from the file, as it reads a user's.

Settings: exact, shift10 / shift25 (each edge moved by up to 10% / 25% of the box side),
loose15 (15% larger), missing20 (20% of the boxes dropped), mixed (shift 10%, loose 10%,
10% missing). Seed s trains the nets with seed s and draws the noise with seed s, so every
method of one seed sees the same noisy boxes (exact: one draw).

Datasets:
- camvid: issue 22's split (docs/results.md section 1.0): 90x120, F = drive 0001TP's 62
  frames (`--full-list`), W = 0016E5's 204 train frames, drive 0006R0 evaluated only
  (`unseen`), val = W's drive (in-domain); resnet18, 64 channels, 1500 steps.
- objects: camvid_objects.py's set (background, car, pedestrian, bicyclist; 180x240, F = 92
  train images drawn with seed 0, W = the other 275); W stores only.

Rows (cached in OUT/DATASET/rows/*.json, each with the commit, torch version and threads):
- anc_s{s}: today's ancillary net (its defaults), trained on F's exact boxes;
  anc_robust_s{s}: the same with `--box-noise` augmentation of F's boxes (`--robust-noise`).
- store_box_{setting}_d{s}, store_grabcut_{setting}_d{s}: the box rules at pixel level
  (stride 1); store_{kind}_{setting}_s{s}: the nets' stores (stride 4), kind = anc (today's
  net, the hard rule), anc_soft (today's net, the graceful rule: `--penalty`, `--uncovered`,
  `--prior`),
  robust (the robust net, the graceful rule), robust_hard (the robust net, the hard rule),
  robust_half (the robust net trained on half of F, the graceful rule), anc_half (today's
  recipe on half of F, conv's stage 1, the graceful rule);
  each scored against W's held-back masks.
- none_{source}_{setting}_s{s} (camvid): the primary from that store, `--self-corr none`;
  linear_anc_soft{tag}_{setting}_s{s} (alpha annealed to 5): self-correction on today's
  net's graceful store; conv_anc_half{tag}_{setting}_s{s}: the paper's 3 stages from today's
  recipe on half of F (anc_half_s{s}, conv's stage 1) and its graceful store; every primary
  scored on val (in-domain) and on the unseen drive.

    grep ^0001TP ../shared/data/camvid/train.txt > F_0001TP.txt
    python benchmarks/box_noise.py ../shared/data/camvid --out box-noise --full-list F_0001TP.txt \\
        --threads 1 --stages anc,stores              # every setting, seeds 0,1,2
    python benchmarks/box_noise.py ../shared/data/camvid --out box-noise --full-list F_0001TP.txt \\
        --threads 1 --stages primaries --settings exact,mixed,missing20 --sources box,anc
    python benchmarks/box_noise.py ../shared/data/camvid --out box-noise --report --json noise.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from camvid_objects import objects_dataset  # noqa: E402
from camvid_table import cached_row, footage_split, mean_sd, resized_copy, scores  # noqa: E402

from boxseg.box_constraint import NEG, BoxConstraint  # noqa: E402
from boxseg.checkpoint import load_model  # noqa: E402
from boxseg.data.box_noise import LEVELS, BoxNoise, image_rng, noisy_boxes, parse_box_noise  # noqa: E402
from boxseg.data.boxes import BoxSpec, boxes_from_mask  # noqa: E402
from boxseg.data.formats import open_dataset  # noqa: E402
from boxseg.data.split import SplitSpec, split_dataset  # noqa: E402
from boxseg.engine import TrainConfig, resolve_device  # noqa: E402
from boxseg.evaluate import evaluate_model, evaluate_store  # noqa: E402
from boxseg.gen_logits import BoxMethod, GenLogitsOptions, gen_logits  # noqa: E402
from boxseg.io import write_json, write_label_png  # noqa: E402
from boxseg.models import ModelSpec  # noqa: E402
from boxseg.primary_options import CorrectionOptions, PrimaryOptions, WeakOptions  # noqa: E402
from boxseg.train_anc import AncOptions, train_anc  # noqa: E402
from boxseg.train_primary import train_primary  # noqa: E402

SETTINGS = ("exact", "shift10", "shift25", "loose15", "missing20", "mixed")
STAGES = ("anc", "stores", "box_stores", "primaries")
NET_KINDS = ("anc", "anc_soft", "anc_half", "robust", "robust_hard", "robust_half")  # net x rule
GRACEFUL = ("anc_soft", "anc_half", "robust", "robust_half")  # stores made with the graceful rule
SOURCES = ("box", *NET_KINDS)  # where a `none` primary's store comes from
# self-correction rows on the graceful store of today's net (the table's best store): linear on
# anc_soft, conv from stage 1's net (today's recipe on half of F) and its anc_half store
CORRECTIONS = {"linear": "anc_soft", "conv": "anc_half"}


def noise_of(setting: str) -> BoxNoise:
    return LEVELS["off" if setting == "exact" else setting]


def link_tree(src: Path, dst: Path) -> None:
    """dst/ holds hard links to src/'s files (copies where links are refused)."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if (dst / f.name).exists():
            continue
        try:
            os.link(f, dst / f.name)
        except FileExistsError:  # another process of this benchmark linked it just now
            continue
        except OSError:
            shutil.copy(f, dst / f.name)


def folder_from_segnet(segnet: Path, dst: Path, splits: list[str], min_area: int) -> Path:
    """The segnet-layout copy in the folder layout: images linked, masks with void 255, and a
    COCO boxes.json with one exact box per component (`min_area` pixels, as the segnet reader
    derives them); reused if done."""
    if (dst / "DONE").is_file():
        return dst
    src = open_dataset(segnet)
    (dst / "images").mkdir(parents=True, exist_ok=True)
    (dst / "masks").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for split in splits:
        ids = src.ids(split)
        for image_id in ids:
            path = src.image_path(split, image_id)
            if not (dst / "images" / path.name).exists():
                os.link(path, dst / "images" / path.name)
            mask = src.read_mask(split, image_id)  # void as 255
            write_label_png(dst / "masks" / f"{image_id}.png", mask)
            h, w = mask.shape
            images.append({"id": len(images) + 1, "file_name": path.name, "height": h, "width": w})
            boxes, labels = boxes_from_mask(mask, src.num_classes, min_area, None, src.background)
            for (x1, y1, x2, y2), label in zip(boxes.tolist(), labels.tolist(), strict=True):
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": images[-1]["id"],
                        "category_id": int(label),
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                    }
                )
        (dst / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    (dst / "classes.txt").write_text("".join(f"{n}\n" for n in src.class_names))
    categories = [{"id": k, "name": n} for k, n in enumerate(src.class_names)]
    write_json(
        dst / "boxes.json", {"images": images, "annotations": annotations, "categories": categories}
    )
    (dst / "DONE").write_text("")
    return dst


def noisy_copy(base: Path, dst: Path, weak_ids: set[str], noise: BoxNoise, draw: int) -> dict:
    """A copy of the folder dataset `base` whose W boxes (`weak_ids`) are made imprecise with
    `noise`, drawn per image with seed `draw`; images and masks linked. Returns counts."""
    done = dst / "DONE"
    if done.is_file():
        return json.loads(done.read_text())
    link_tree(base / "images", dst / "images")
    link_tree(base / "masks", dst / "masks")
    for f in base.glob("*.txt"):
        shutil.copy(f, dst / f.name)
    doc = json.loads((base / "boxes.json").read_text())
    ds = open_dataset(base)
    classes = tuple(k for k in range(ds.num_classes) if k != ds.background)
    cat_of = {c["id"]: c["id"] for c in doc["categories"]}  # category ids are class indices
    by_image: dict[int, list[dict]] = {}
    for a in doc["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    annotations, before, after = [], 0, 0
    for im in doc["images"]:
        stem = Path(im["file_name"]).stem
        anns = by_image.get(im["id"], [])
        if stem not in weak_ids:
            annotations += anns
            continue
        xywh = np.array([a["bbox"] for a in anns], np.float64).reshape(-1, 4)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)
        labels = [cat_of[a["category_id"]] for a in anns]
        nb, nl = noisy_boxes(
            boxes, labels, im["height"], im["width"], noise, image_rng(draw, stem), classes
        )
        before, after = before + len(anns), after + len(nb)
        for (x1, y1, x2, y2), label in zip(nb.tolist(), nl.tolist(), strict=True):
            annotations.append(
                {
                    "id": len(annotations) + 10**6,
                    "image_id": im["id"],
                    "category_id": int(label),
                    "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                }
            )
    write_json(dst / "boxes.json", doc | {"annotations": annotations})
    counts = {"noise": noise.to_dict(), "draw": draw, "w_boxes": before, "w_boxes_kept": after}
    write_json(done, counts)
    return counts


@dataclass(frozen=True)
class Setup:
    """One dataset's folder base, F/W split, evaluation splits and training settings."""

    root: Path
    base: Path
    split: SplitSpec
    unseen: str | None  # the split only evaluated (footage no set has seen)
    val: str | None
    anc: dict  # the ancillary nets' steps, batch, crop, lr, class weights
    min_area: int
    spec: ModelSpec = ModelSpec("resnet18", 16, 64, 64)


def setup(args) -> Setup:
    """The dataset's folder base, split and training settings."""
    root = args.out / args.dataset
    if args.dataset == "camvid":
        segnet = resized_copy(args.data, root / "segnet", ["train", "val"], 0.25)
        seen, unseen = footage_split(segnet, "train", "0006R0")
        base = folder_from_segnet(segnet, root / "base", [seen, unseen, "val"], min_area=4)
        if args.full_list is None:
            raise SystemExit("--full-list: the camvid setting needs F's list (F_0001TP.txt)")
        split = SplitSpec(seen, None, 0, args.full_list.resolve())
        anc = dict(iters=1500, batch_size=8, crop=96, lr=2e-3, class_weights="median-freq")
        return Setup(root, base, split, unseen, "val", anc, min_area=4)
    half = resized_copy(args.data, root / "camvid_half", ["train", "val"], 0.5)
    base = objects_dataset(half, root / "base", ["train", "val"])
    split = SplitSpec("train", round(0.25 * len(open_dataset(base).ids("train"))), 0)
    anc = dict(iters=1200, batch_size=4, crop=160, lr=1e-3, class_weights="median-freq")
    return Setup(root, base, split, None, None, anc, min_area=16)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path, help="CamVid root (segnet layout)")
    ap.add_argument("--out", type=Path, default=Path("box-noise"))
    ap.add_argument("--dataset", choices=("camvid", "objects"), default="camvid")
    ap.add_argument("--full-list", type=Path, help="camvid: F's ids (the 62 frames of 0001TP)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--stages", default="anc,stores,box_stores", help=", ".join(STAGES))
    ap.add_argument(
        "--sources",
        default="box,anc",
        help="primaries: none from these stores "
        f"({', '.join(SOURCES)}); and/or {', '.join(CORRECTIONS)} (graceful stores of today's net)",
    )
    ap.add_argument(
        "--robust-noise",
        default="shift=0.15,grow=0.05,drop=0.2",
        help="anc_robust: train-anc --box-noise (broader than any one setting)",
    )
    ap.add_argument(
        "--penalty",
        type=float,
        default=NEG,
        help="the graceful rule (anc_soft, anc_half, robust, robust_half stores): --box-penalty",
    )
    ap.add_argument(
        "--uncovered",
        default="net",
        choices=("net", "void"),
        help="the graceful rule (anc_soft, anc_half, robust, robust_half stores): --box-uncovered",
    )
    ap.add_argument(
        "--prior",
        type=float,
        default=0.0,
        help="the graceful rule (anc_soft, anc_half, robust, robust_half stores): --box-prior",
    )
    ap.add_argument(
        "--kinds", default="anc", help=f"stores stage: net stores to make ({', '.join(NET_KINDS)})"
    )
    ap.add_argument("--tag", default="", help="appended to graceful stores' names (a sweep)")
    ap.add_argument("--iters", type=int, default=1500, help="steps of every primary")
    ap.add_argument("--threads", type=int, help="torch CPU threads")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--report", action="store_true", help="only print the tables from the cache")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--markdown", action="store_true", help="print the tables as markdown")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    settings = [s for s in args.settings.split(",") if s]
    stages = [s for s in args.stages.split(",") if s]
    sources = [s for s in args.sources.split(",") if s]
    kinds = [s for s in args.kinds.split(",") if s]
    for what, got, allowed in (
        ("--settings", settings, SETTINGS),
        ("--stages", stages, STAGES),
        ("--sources", sources, SOURCES + tuple(CORRECTIONS)),
        ("--kinds", kinds, NET_KINDS),
    ):
        if set(got) - set(allowed):
            raise SystemExit(
                f"{what}: unknown {sorted(set(got) - set(allowed))}; "
                f"choose from {', '.join(allowed)}"
            )
    s_ = setup(args)
    root, split, spec = s_.root, s_.split, s_.spec
    (root / "rows").mkdir(parents=True, exist_ok=True)
    base_ds = open_dataset(s_.base)
    full_ids, weak_ids = split_dataset(base_ds, split)
    device = args.device

    def row(name: str, fn) -> dict:
        return cached_row(
            root / "rows", name, fn, lambda r: f"mIoU {r.get('miou', float('nan')):.2f}"
        )

    def data_for(setting: str, draw: int) -> Path:
        draw = 0 if setting == "exact" else draw
        dst = root / "noisy" / f"{setting}_d{draw}"
        noisy_copy(s_.base, dst, set(weak_ids), noise_of(setting), draw)
        return dst

    def anc_net(kind: str, seed: int) -> Path:
        run = root / "runs" / f"{kind}_s{seed}"
        a = s_.anc
        cfg = TrainConfig(
            iters=a["iters"],
            batch_size=a["batch_size"],
            crop=a["crop"],
            scale_min=0.75,
            scale_max=1.25,
            lr=a["lr"],
            optimizer="adamw",
            seed=seed,
            device=device,
            checkpoint_every=250,
            resume=True,
        )
        extra = {"full_fraction": 0.5 if kind.endswith("_half") else 1.0}  # conv's stage 1
        if kind.startswith("anc_robust"):
            extra["box_noise"] = parse_box_noise(args.robust_noise)

        def fit() -> dict:
            opts = AncOptions(
                s_.base,
                run,
                split,
                spec,
                cfg,
                BoxSpec(s_.min_area),
                class_weights=a["class_weights"],
                val_split=s_.val,
                **extra,
            )
            r = train_anc(opts, quiet=True)
            noise = extra.get("box_noise")
            return (scores(r) if r else {}) | {
                "steps": a["iters"],
                "box_noise": noise and noise.to_dict(),
            }

        row(f"{kind}_s{seed}", fit)
        return run / "model.pt"

    def rule_of_kind(kind: str) -> BoxConstraint:
        """The graceful rule (--penalty, --uncovered, --prior) for the robust,
        robust_half, anc_soft and anc_half stores, the hard rule for the others."""
        if kind not in GRACEFUL:
            return BoxConstraint()
        return BoxConstraint(True, args.prior, args.penalty, args.uncovered == "void")

    def store(kind: str, setting: str, seed: int) -> Path:
        """A W store of `kind` (box, grabcut: the rules; anc, robust: the nets) on the W boxes
        of (setting, draw seed), scored against W's masks."""
        data = data_for(setting, seed)
        draw = 0 if setting == "exact" else seed
        rule_store = kind in ("box", "grabcut")
        tag = args.tag if kind in GRACEFUL else ""
        name = f"store_{kind}{tag}_{setting}_" + (f"d{draw}" if rule_store else f"s{seed}")
        path = root / "stores" / f"{name[len('store_') :]}.zarr"

        def make() -> dict:
            if rule_store:
                boxes = BoxMethod(kind, box_min_area=s_.min_area)
                opts = GenLogitsOptions(
                    data, str(path), split, box_method=boxes, stride=1, device=device
                )
                gen_logits(opts, quiet=True)
            else:
                net = anc_net(
                    {
                        "robust_half": "anc_robust_half",
                        "anc_half": "anc_half",
                        "robust": "anc_robust",
                        "robust_hard": "anc_robust",
                    }.get(kind, "anc"),
                    seed,
                )
                rule = rule_of_kind(kind)
                opts = GenLogitsOptions(data, str(path), split, net, constraint=rule, device=device)
                gen_logits(opts, quiet=True)
            q = evaluate_store(open_dataset(data), split.split, str(path), quiet=True)
            counts = json.loads((data / "DONE").read_text())
            return scores(q) | {"coverage": q["coverage"], "setting": setting} | counts

        row(name, make)
        return path

    def on_unseen(run: Path) -> dict:
        if s_.unseen is None:
            return {}
        model, meta = load_model(run / "model.pt", device=resolve_device(device))
        r = evaluate_model(model, meta, base_ds, s_.unseen, resolve_device(device), quiet=True)
        return {"unseen": scores(r)}

    def primary(mode: str, source: str, setting: str, seed: int) -> None:
        name = f"{mode}_{source}{args.tag if source in GRACEFUL else ''}_{setting}_s{seed}"
        run = root / "runs" / name
        data = data_for(setting, seed)
        cfg = TrainConfig(
            iters=args.iters,
            batch_size=4,
            crop=96,
            scale_min=0.75,
            scale_max=1.25,
            lr=2e-3,
            optimizer="adamw",
            seed=seed,
            device=device,
            checkpoint_every=250,
            resume=True,
        )
        weak = WeakOptions(logits=str(store(source, setting, seed)))
        correction = CorrectionOptions(mode)
        if mode == "linear":
            correction = replace(correction, alpha_end=5.0)
        if mode == "conv":  # stage 1's net (half of F) and its store; g follows the same rule
            anc_model = anc_net("anc_half" if source == "anc_half" else "anc_robust_half", seed)
            weak = replace(weak, anc_model=anc_model, constraint=rule_of_kind(source))
        opts = PrimaryOptions(data, run, split, spec, cfg, weak, correction, val_split=s_.val)

        def fit() -> dict:
            r = train_primary(opts, quiet=True)
            config = json.loads((run / "config.json").read_text())
            return scores(r) | {"steps": config["iters"], "setting": setting} | on_unseen(run)

        row(name, fit)

    if not args.report:
        for seed in seeds:
            for stage in stages:
                if stage == "anc":
                    anc_net("anc", seed)
                for setting in settings:
                    if stage == "box_stores":
                        store("box", setting, seed)
                        store("grabcut", setting, seed)
                    elif stage == "stores":
                        for kind in kinds:
                            store(kind, setting, seed)
                    elif stage == "primaries":
                        for source in sources:
                            if source in CORRECTIONS:  # self-correction, graceful stores
                                primary(source, CORRECTIONS[source], setting, seed)
                            else:
                                primary("none", source, setting, seed)
    results = {p.stem: json.loads(p.read_text()) for p in (root / "rows").glob("*.json")}
    summary = summarise(results, seeds)
    (markdown_tables if args.markdown else print_tables)(summary, args.dataset)
    if args.json:
        write_json(
            args.json,
            {
                "summary": summary,
                "rows": results,
                "dataset": args.dataset,
                "num_full": len(full_ids),
                "num_weak": len(weak_ids),
            },
        )


def summarise(results: dict[str, dict], seeds: list[int]) -> dict:
    """Stores: per (kind, setting) the W pseudo-label mIoU over seeds (draws) and, per seed,
    minus box-fill on the same noisy boxes; primaries: per row, both evaluations."""
    stores: dict = {}
    primaries: dict = {}
    for key, r in results.items():
        m = re.fullmatch(rf"store_(\w+)_({'|'.join(SETTINGS)})_[sd](\d+)", key)
        if m and int(m[3]) in seeds:
            stores.setdefault((m[1], m[2]), {})[int(m[3])] = r["miou"]
        m = re.fullmatch(rf"(none|linear|conv)_(\w+)_({'|'.join(SETTINGS)})_s(\d+)", key)
        if m and int(m[4]) in seeds:
            got = primaries.setdefault(f"{m[1]}_{m[2]}_{m[3]}", {"val": {}, "unseen": {}})
            got["val"][int(m[4])] = r["miou"]
            if "unseen" in r:
                got["unseen"][int(m[4])] = r["unseen"]["miou"]
    out_stores = {}
    for (kind, setting), by_seed in sorted(stores.items()):
        m, sd = mean_sd(list(by_seed.values()))
        box = stores.get(("box", setting), {})
        if setting == "exact":
            box = {s: box.get(0) for s in by_seed if 0 in box}
        paired = {s: v - box[s] for s, v in by_seed.items() if s in box}
        entry = {"miou_mean": m, "miou_sd": sd, "miou_seeds": by_seed}
        if kind != "box" and paired:
            pm, psd = mean_sd(list(paired.values()))
            entry |= {"minus_box_fill": paired, "minus_box_fill_mean": pm, "minus_box_fill_sd": psd}
        out_stores[f"{kind}_{setting}"] = entry
    out_primaries = {}
    for name, ev in sorted(primaries.items()):
        out_primaries[name] = {}
        for where, by_seed in ev.items():
            if by_seed:
                m, sd = mean_sd(list(by_seed.values()))
                out_primaries[name][where] = {"miou_mean": m, "miou_sd": sd, "miou_seeds": by_seed}
    return {"stores": out_stores, "primaries": out_primaries, "paired": paired_primaries(primaries)}


def references(name: str) -> list[str]:
    """The rows a primary is compared with, seed for seed: a correction with `none` on the
    graceful store of today's net (conv's stage-1 store is its half-F twin), a noisy-box `none`
    with box-fill's under the same boxes, the void store's with today's store under the same
    boxes, and every noisy-box row with today's store on exact boxes."""
    mode, rest = name.split("_", 1)
    source, setting = rest.rsplit("_", 1)
    if mode != "none":
        refs = [f"none_{source.replace('anc_half', 'anc_soft')}_{setting}"]
    else:
        refs = [] if source == "box" else [f"none_box_{setting}"]
    if mode == "none" and source.startswith("anc_soft"):
        refs.append(f"none_anc_{setting}")
    if setting != "exact":
        refs.append("none_anc_exact")
    return refs


def paired_primaries(primaries: dict[str, dict]) -> dict:
    """'A minus B' -> per evaluation, the per-seed differences (seeds both rows have), their
    mean and sd: the comparisons issue 38 asks for, paired by training seed."""
    out: dict = {}
    for name, ev in sorted(primaries.items()):
        for ref in references(name):
            if ref not in primaries:
                continue
            diff: dict = {}
            for where in ("val", "unseen"):
                a, b = ev[where], primaries[ref][where]
                d = {s: a[s] - b[s] for s in a if s in b}
                if d:
                    m, sd = mean_sd(list(d.values()))
                    diff[where] = {"miou_mean": m, "miou_sd": sd, "miou_seeds": d}
            if diff:
                out[f"{name} minus {ref}"] = diff
    return out


def print_tables(summary: dict, dataset: str) -> None:
    print(f"\n{dataset}: W pseudo-label mIoU (against W's held-back masks), mean +- sd over seeds")
    print(f"{'store':<22} {'mIoU':>15} {'minus box-fill (paired)':>30}")
    for name, e in summary["stores"].items():
        paired = ""
        if "minus_box_fill" in e:
            paired = f"{e['minus_box_fill_mean']:+6.2f} +- {e['minus_box_fill_sd']:4.2f}"
        print(f"{name:<22} {e['miou_mean']:6.2f} +- {e['miou_sd']:4.2f} {paired:>30}")
    if summary["primaries"]:
        print(f"\n{'primary':<26} {'val (in-domain)':>16} {'unseen':>16}")
        for name, e in summary["primaries"].items():
            cells = [
                f"{e[k]['miou_mean']:6.2f} +- {e[k]['miou_sd']:4.2f}" if k in e else "-"
                for k in ("val", "unseen")
            ]
            print(f"{name:<26} {cells[0]:>16} {cells[1]:>16}")


def cell(e: dict | None, key: str = "miou") -> str:
    """'mean +- sd (per-seed values)' of one summary entry, or '-'."""
    if not e:
        return "-"
    seeds = ", ".join(f"{v:.2f}" for _, v in sorted(e[f"{key}_seeds"].items()))
    return f"{e[f'{key}_mean']:.2f} +- {e[f'{key}_sd']:.2f} ({seeds})"


def markdown_tables(summary: dict, dataset: str) -> None:
    """The stores table (a row per setting, a column per kind, and each net's lead over box-fill
    paired by seed) and the primaries table, as docs/results.md shows them."""
    stores = summary["stores"]
    kinds = sorted(
        {k.rsplit("_", 1)[0] for k in stores} - {"box"},
        key=lambda k: (k not in ("grabcut", "anc"), k),
    )
    print(f"| W's boxes ({dataset}) | box-fill | " + " | ".join(kinds) + " |")
    print("|---" * (len(kinds) + 2) + "|")
    for setting in SETTINGS:
        row = [cell(stores.get(f"{k}_{setting}")) for k in ["box", *kinds]]
        print(f"| {setting} | " + " | ".join(row) + " |")
    print(f"\n| lead over box-fill, paired by seed ({dataset}) | " + " | ".join(kinds) + " |")
    print("|---" * (len(kinds) + 1) + "|")
    for setting in SETTINGS:
        lead = []
        for k in kinds:
            e = stores.get(f"{k}_{setting}")
            paired = e is not None and "minus_box_fill_mean" in e
            lead.append(
                f"{e['minus_box_fill_mean']:+.2f} +- {e['minus_box_fill_sd']:.2f}"
                if paired
                else "-"
            )
        print(f"| {setting} | " + " | ".join(lead) + " |")
    if summary["primaries"]:
        print("\n| primary, --self-corr and store | val (in-domain) | unseen |\n|---|---|---|")
        for name, e in summary["primaries"].items():
            print(f"| {name} | {cell(e.get('val'))} | {cell(e.get('unseen'))} |")
    if summary.get("paired"):
        print("\n| paired by seed | val (in-domain) | unseen |\n|---|---|---|")
        for name, e in summary["paired"].items():
            print(f"| {name} | {cell(e.get('val'))} | {cell(e.get('unseen'))} |")


if __name__ == "__main__":
    main()
