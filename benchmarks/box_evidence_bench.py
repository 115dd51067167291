"""Exact box evidence on CamVid (issue 21): the stored path against the pixel-level path.

The setting of `ancillary_ablation.py` (CamVid at 180x240, F = 92 train images drawn with seed
0, W = the other 275, boxes from each class's connected components of >= 16 pixels; the
`long1200` ancillary net: 1200 steps, median-frequency weights, seeds 0/1/2). For each net:
- **pixel level**: the net run on each W image with its boxes, constrained at pixel level
  (`boxseg eval --model`, restricted to W), scored against W's held-back masks;
- **stored**: its store at stride 4 (the default) and stride 1, float16, read as every reader
  reads it (decoded, then constrained at pixel level: `boxseg eval --split train --logits`).
And box-fill and GrabCut stores at stride 1 (pixel level; box-fill also at stride 4).
Scored on W: the footage W came from (not unseen footage). Nets are cached in OUT/nets (the
ablation's OUT can be reused), rows in OUT/evidence/*.json.

    python benchmarks/box_evidence_bench.py ../shared/data/camvid --out anc-ablation \\
        --json box_evidence.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ancillary_ablation import NETS  # noqa: E402
from camvid_table import cached_row, resized_copy  # noqa: E402

from boxseg.checkpoint import load_model  # noqa: E402
from boxseg.data.boxes import BoxSpec  # noqa: E402
from boxseg.data.formats import open_dataset  # noqa: E402
from boxseg.data.split import SplitSpec, split_dataset  # noqa: E402
from boxseg.engine import TrainConfig  # noqa: E402
from boxseg.evaluate import evaluate_model, evaluate_store  # noqa: E402
from boxseg.gen_logits import BoxMethod, GenLogitsOptions, gen_logits  # noqa: E402
from boxseg.io import write_json  # noqa: E402
from boxseg.models import ModelSpec  # noqa: E402
from boxseg.run_dir import code_version  # noqa: E402
from boxseg.train_anc import AncOptions, train_anc  # noqa: E402

SEEDS = ("long1200", "long1200_s1", "long1200_s2")  # the ablation's nets, seeds 0 / 1 / 2
THIN = ("pole", "sign_symbol", "pedestrian")
BOX_ROWS = (("box", 1), ("box", 4), ("grabcut", 1))  # (GrabCut: 5-8 min a store on 2 cores)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path, help="CamVid root (segnet layout)")
    ap.add_argument("--out", type=Path, default=Path("anc-ablation"))
    ap.add_argument("--json", type=Path)
    ap.add_argument("--nets", default=",".join(SEEDS))
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    out = args.out
    (out / "evidence").mkdir(parents=True, exist_ok=True)
    data = resized_copy(args.data, out / "data", ["train", "val"], 0.5)
    ds = open_dataset(data)
    split = SplitSpec("train", round(0.25 * len(ds.ids("train"))), 0)
    _, weak_ids = split_dataset(ds, split)
    spec = ModelSpec("resnet18", 16, 64, 64)
    box_spec = BoxSpec(min_area=16)
    dev = torch.device(args.device)

    def cached(name: str, fn) -> dict:
        def run() -> dict:
            return fn() | {"commit": code_version(), "torch": torch.__version__}

        return cached_row(out / "evidence", name, run, lambda r: f"W mIoU {r['w']['miou']:.2f}")

    def scored(r: dict) -> dict:
        return {"miou": r["miou"], "per_class_iou": r["per_class_iou"]}

    def net(name: str) -> Path:
        run = out / "nets" / name
        if not (run / "model.pt").is_file():  # trained exactly as the ablation trains it
            n = NETS[name]
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
                val_split=None,
            )
            train_anc(opts, quiet=True)
        return run / "model.pt"

    def store_row(name: str, stride: int, model: Path | None, method: str | None) -> dict:
        def run() -> dict:
            store = out / "stores" / f"evidence_{name}_s{stride}.zarr"
            bm = None if method is None else BoxMethod(method, box_min_area=16)
            opts = GenLogitsOptions(
                data,
                str(store),
                split,
                model,
                box_method=bm,
                stride=stride,
                device=args.device,
                overwrite=True,
            )
            gen_logits(opts, quiet=True)
            return {"w": scored(evaluate_store(ds, "train", str(store), quiet=True))}

        return cached(f"{name}_stride{stride}", run)

    def pixel_row(name: str, model_path: Path) -> dict:
        def run() -> dict:
            model, meta = load_model(model_path, device=dev)
            r = evaluate_model(model, meta, ds, "train", dev, quiet=True, ids=weak_ids)
            return {"w": scored(r)}

        return cached(f"{name}_pixel", run)

    rows: dict[str, dict] = {}
    for method, stride in BOX_ROWS:
        rows[f"{method}_stride{stride}"] = store_row(method, stride, None, method)
    for name in [n for n in args.nets.split(",") if n]:
        model_path = net(name)
        rows[f"{name}_pixel"] = pixel_row(name, model_path)
        for stride in (1, 4):
            rows[f"{name}_stride{stride}"] = store_row(name, stride, model_path, None)

    nets = [n for n in args.nets.split(",") if n]
    print(f"\nW pseudo-label mIoU % (CamVid 180x240, W = {len(weak_ids)} frames of the train "
          f"videos: W's own footage), commit {code_version()}")  # fmt: skip
    header = f"{'row':<22} {'mIoU':>14} " + " ".join(f"{c[:10]:>14}" for c in THIN)
    print(header)

    def line(label: str, keys: list[str]) -> None:
        vals = [rows[k]["w"] for k in keys]
        m = np.array([v["miou"] for v in vals])
        per = {c: np.array([v["per_class_iou"][c] or 0.0 for v in vals]) for c in THIN}

        def fmt(x: np.ndarray) -> str:
            return f"{x.mean():.2f}" if len(x) == 1 else f"{x.mean():.2f} +- {x.std(ddof=1):.2f}"

        print(f"{label:<22} {fmt(m):>14} " + " ".join(f"{fmt(per[c]):>14}" for c in THIN))

    for method, stride in BOX_ROWS:
        line(f"{method} stride {stride}", [f"{method}_stride{stride}"])
    for what in ("pixel", "stride1", "stride4") if nets else ():
        line(f"anc {what}", [f"{n}_{what}" for n in nets])
    if args.json:
        write_json(args.json, {"commit": code_version(), "torch": torch.__version__,
                               "rows": rows})  # fmt: skip


if __name__ == "__main__":
    main()
