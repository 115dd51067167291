"""The ancillary net against the box-only rules on CamVid, one change at a time (issue 13).

Same data and split as `camvid_table.py` (CamVid at 180x240, F = 92 train images drawn with
seed 0, W = the other 275, boxes from each class's connected components of >= 16 pixels).
Each row trains an ancillary net (or reuses one) and scores, for a box decoding rule:
- its W store's pseudo-labels against W's held-back masks (`boxseg eval --split train --logits`),
- the ancillary net with boxes on val.
The box-fill and GrabCut stores are scored the same way. Rows are cached in OUT/rows/*.json,
so a killed run resumes, and `--rows` picks some.

    python benchmarks/ancillary_ablation.py ../shared/data/camvid --out anc-ablation \\
        --json anc_ablation.json
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from camvid_table import cached_row, resized_copy  # noqa: E402

from boxseg.box_constraint import BoxConstraint  # noqa: E402
from boxseg.checkpoint import load_model  # noqa: E402
from boxseg.data.boxes import BoxSpec  # noqa: E402
from boxseg.data.formats import open_dataset  # noqa: E402
from boxseg.data.split import SplitSpec  # noqa: E402
from boxseg.engine import TrainConfig  # noqa: E402
from boxseg.evaluate import TestTime, evaluate_model, evaluate_store  # noqa: E402
from boxseg.gen_logits import BoxMethod, GenLogitsOptions, gen_logits  # noqa: E402
from boxseg.io import write_json  # noqa: E402
from boxseg.models import BoxPathSpec, ModelSpec  # noqa: E402
from boxseg.primary_options import (  # noqa: E402
    CorrectionOptions,
    LossOptions,
    PrimaryOptions,
    WeakOptions,
)
from boxseg.train_anc import AncOptions, train_anc  # noqa: E402
from boxseg.train_primary import train_primary  # noqa: E402


@dataclass(frozen=True)
class Net:
    """How one ancillary net is trained."""

    box_path: BoxPathSpec = BoxPathSpec()
    class_weights: str = "none"
    iters: int = 200
    lr: float = 1e-3
    crop: int = 160
    seed: int = 0
    constraint_loss: bool = False


@dataclass(frozen=True)
class Row:
    net: str  # key into NETS
    constraint: BoxConstraint = field(default_factory=lambda: BoxConstraint(False))
    note: str = ""


LEGACY = BoxPathSpec("nearest", False)
NETS = {
    "legacy": Net(LEGACY),
    "maxpool": Net(BoxPathSpec("max", False)),
    "direct": Net(BoxPathSpec("max", True)),
    "weighted": Net(BoxPathSpec("max", True), "median-freq"),
    "long600": Net(BoxPathSpec("max", True), "median-freq", 600),
    "long1200": Net(BoxPathSpec("max", True), "median-freq", 1200),
    "long2400": Net(BoxPathSpec("max", True), "median-freq", 2400),
    "long4800": Net(BoxPathSpec("max", True), "median-freq", 4800),
    "long1200_s1": Net(BoxPathSpec("max", True), "median-freq", 1200, seed=1),
    "long1200_s2": Net(BoxPathSpec("max", True), "median-freq", 1200, seed=2),
    "long1200_lr2": Net(BoxPathSpec("max", True), "median-freq", 1200, lr=2e-3),
    "long1200_crop224": Net(BoxPathSpec("max", True), "median-freq", 1200, crop=224),
    "legacy_weighted": Net(LEGACY, "median-freq"),
    "weighted_closs": Net(BoxPathSpec("max", True), "median-freq", constraint_loss=True),
}
ON = BoxConstraint(True)
ROWS = {
    "legacy": Row("legacy", note="today's ancillary net"),
    "maxpool": Row("maxpool", note="+ boxes max-pooled to every scale"),
    "direct": Row("direct", note="+ direct box path"),
    "direct_constraint": Row("direct", ON, "+ box constraint"),
    "weighted_constraint": Row("weighted", ON, "+ median-frequency class weights"),
    "long600_constraint": Row("long600", ON, "+ 600 steps"),
    "long1200_constraint": Row("long1200", ON, "+ 1200 steps"),
    "long2400_constraint": Row("long2400", ON, "+ 2400 steps"),
    "long4800_constraint": Row("long4800", ON, "+ 4800 steps"),
    "long1200_s1_constraint": Row("long1200_s1", ON, "1200 steps, training seed 1"),
    "long1200_s2_constraint": Row("long1200_s2", ON, "1200 steps, training seed 2"),
    "long1200_s1": Row("long1200_s1", note="1200 steps, seed 1, no constraint"),
    "long1200_s2": Row("long1200_s2", note="1200 steps, seed 2, no constraint"),
    "long1200": Row("long1200", note="1200 steps, no constraint"),
    "long1200_lr2_constraint": Row("long1200_lr2", ON, "1200 steps at lr 2e-3"),
    "long1200_crop224_constraint": Row("long1200_crop224", ON, "1200 steps at crop 224"),
    # what each change does alone, on top of today's net
    "legacy_constraint": Row("legacy", ON, "today's net + box constraint only"),
    "legacy_weighted": Row("legacy_weighted", note="today's net + class weights only"),
    "weighted": Row("weighted", note="max + direct + weights, no constraint"),
    "weighted_closs_constraint": Row("weighted_closs", ON, "+ the constraint in the loss too"),
}
for p in (1, 2, 4, 8):
    for n in ("weighted", "long600", "long1200", "long2400"):
        ROWS[f"{n}_prior{p}"] = Row(n, BoxConstraint(True, float(p)), f"+ smaller-box prior {p}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path, help="CamVid root (segnet layout)")
    ap.add_argument("--out", type=Path, default=Path("anc-ablation"))
    ap.add_argument("--json", type=Path)
    ap.add_argument("--rows", default="", help="comma-separated rows (default: all)")
    ap.add_argument("--baselines", default="box,grabcut", help="box-only stores to score")
    ap.add_argument("--primary", default="", help="stores to train primaries from, e.g. "
                    "long1200_prior2,box (none and linear, --primary-seeds)")  # fmt: skip
    ap.add_argument("--primary-seeds", default="0,1")
    ap.add_argument("--primary-class-weights", default="none")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    out = args.out
    (out / "rows").mkdir(parents=True, exist_ok=True)
    data = resized_copy(args.data, out / "data", ["train", "val"], 0.5)
    ds = open_dataset(data)
    split = SplitSpec("train", round(0.25 * len(ds.ids("train"))), 0)
    spec = ModelSpec("resnet18", 16, 64, 64)
    box_spec = BoxSpec(min_area=16)

    def summary(r: dict) -> str:
        return ", ".join(f"{k} {v:.2f}" for k, v in r.items() if k.endswith("miou"))

    def cached(name: str, fn) -> dict:
        return cached_row(out / "rows", name, fn, summary)

    def net(name: str) -> Path:
        n = NETS[name]
        run = out / "nets" / name

        def train() -> dict:
            cfg = TrainConfig(iters=n.iters, batch_size=4, crop=n.crop, scale_min=0.75,
                              scale_max=1.25, lr=n.lr, optimizer="adamw", seed=n.seed,
                              device=args.device, checkpoint_every=100, resume=True)  # fmt: skip
            opts = AncOptions(
                data,
                run,
                split,
                spec,
                cfg,
                box_spec,
                box_path=n.box_path,
                class_weights=n.class_weights,
                constraint_loss=n.constraint_loss,
                val_split=None,
            )
            train_anc(opts, quiet=True)
            return {"iters": float(n.iters)}

        cached(f"net_{name}", train)
        return run / "model.pt"

    def scores(r: dict) -> dict:
        return {"miou": r["miou"], "per_class_iou": r["per_class_iou"]}

    def row(name: str) -> dict:
        r = ROWS[name]
        model_path = net(r.net)

        def run() -> dict:
            store = out / "stores" / f"{name}.zarr"
            opts = GenLogitsOptions(data, str(store), split, model_path, constraint=r.constraint)
            gen_logits(replace(opts, device=args.device, overwrite=True), quiet=True)
            w = evaluate_store(ds, "train", str(store), quiet=True)
            model, meta = load_model(model_path, device=torch.device("cpu"))
            how = TestTime(constraint=r.constraint)
            val = evaluate_model(model, meta, ds, "val", torch.device("cpu"), True, how)
            return {"w_miou": w["miou"], "w_per_class_iou": w["per_class_iou"],
                    "val_miou": val["miou"], "val_per_class_iou": val["per_class_iou"],
                    "net": r.net, "note": r.note, "constraint": r.constraint.to_dict()}  # fmt: skip

        return cached(name, run)

    def baseline(method: str) -> dict:
        def run() -> dict:
            store = out / "stores" / f"{method}.zarr"
            boxes = BoxMethod(method, box_min_area=box_spec.min_area)
            opts = GenLogitsOptions(data, str(store), split, box_method=boxes, device=args.device)
            gen_logits(replace(opts, overwrite=True), quiet=True)
            w = evaluate_store(ds, "train", str(store), quiet=True)
            return {"w_miou": w["miou"], "w_per_class_iou": w["per_class_iou"]}

        return cached(f"baseline_{method}", run)

    results = {}
    for m in [m for m in args.baselines.split(",") if m]:
        results[f"baseline_{m}"] = baseline(m)
    wanted = [r for r in args.rows.split(",") if r] or list(ROWS)
    for name in wanted:
        results[name] = row(name)

    def primary(store_row: str, mode: str, seed: int) -> dict:
        store = out / "stores" / f"{store_row}.zarr"
        cfg = TrainConfig(iters=200, batch_size=4, crop=160, scale_min=0.75, scale_max=1.25,
                          lr=1e-3, optimizer="adamw", seed=seed, device=args.device,
                          checkpoint_every=50, resume=True)  # fmt: skip
        run = out / "primary" / f"{store_row}_{mode}{tag}_s{seed}"
        weak, correction = WeakOptions(logits=str(store)), CorrectionOptions(mode)
        losses = LossOptions(class_weights=args.primary_class_weights)
        opts = PrimaryOptions(data, run, split, spec, cfg, weak, correction, losses)
        return scores(train_primary(opts, quiet=True))

    tag = "" if args.primary_class_weights == "none" else "_mf"
    for store_row in [s for s in args.primary.split(",") if s]:
        for mode in ("none", "linear"):
            for seed in (int(s) for s in args.primary_seeds.split(",")):
                key = f"primary_{store_row}_{mode}{tag}_s{seed}"
                results[key] = cached(key, lambda s=store_row, m=mode, sd=seed:
                                      primary(s, m, sd))  # fmt: skip

    print(f"\n{'row':<26} {'W mIoU':>7} {'val mIoU':>8}  note")
    for name, r in results.items():
        w, v = r.get("w_miou", r.get("miou")), r.get("val_miou", float("nan"))
        print(f"{name:<26} {w if w is not None else float('nan'):7.2f} {v:8.2f}  "
              f"{r.get('note', '')}")  # fmt: skip
    if args.json:
        write_json(args.json, {"rows": results, "nets": {k: repr(v) for k, v in NETS.items()}})


if __name__ == "__main__":
    main()
